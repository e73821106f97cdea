# flash_sale_api for the items of a zone that sells several (flash_sale_item): listed page by
# page, one item read, its stock set (PATCH) and set back to the configuration's; a change
# wins at once on every worker and survives `nginx -s reload`; bad requests get a 4xx with
# {"error": ...} and change nothing. Permits name their item, `?item=` addresses one, and a
# revocation frees the item's slot. The metrics count the items per zone.
#
# Each block reloads the running nginx (SIGHUP): the zones, their items and the API's stocks
# carry over from block to block.

BEGIN { $ENV{TEST_NGINX_USE_HUP} = 1 }

use Test::Nginx::Socket 'no_plan';

our $HttpConfig = <<'_EOC_';
    map $arg_sku $stock { red-42 2; blue-43 1; white-44 5; default 0; }
    flash_sale_zone $arg_user zone=drop:1m;
    flash_sale_zone $arg_user zone=one:1m;
_EOC_

# After the reload of TEST 3: the configuration lowers red-42 to 1.
our $HttpConfigLowered = <<'_EOC_';
    map $arg_sku $stock { red-42 1; blue-43 1; white-44 5; default 0; }
    flash_sale_zone $arg_user zone=drop:1m;
    flash_sale_zone $arg_user zone=one:1m;
_EOC_

our $Config = <<'_EOC_';
    add_header X-Sale $flash_sale_status always;
    location /buy {
        flash_sale zone=drop;
        flash_sale_item $arg_sku;
        flash_sale_max_permits $stock;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /single {
        flash_sale zone=one;
        flash_sale_max_permits 5;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
    location = /metrics { flash_sale_metrics; }
_EOC_

master_on();
workers(2);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: items are listed in the order the zone first saw them, page by page; one item,
or 404; permits name their item, and ?item= addresses one; the metrics count the items
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- request eval
["GET /buy?user=u1&sku=red-42", "GET /buy?user=u2&sku=blue-43", "GET /buy?user=u3&sku=blue-43",
 "GET /buy?user=u3&sku=green",
 "GET /api/zones/drop/items",
 "GET /api/zones/drop/items?limit=1",
 "GET /api/zones/drop/items?limit=1&after=AAAAAAAAAAE",
 "GET /api/zones/drop/items?limit=1&after=AAAAAAAAAAI",
 "GET /api/zones/drop/items/blue-43",
 "GET /api/zones/drop/items/green",
 "GET /api/zones/drop/permits",
 "GET /api/zones/drop/permits/u1?item=red-42",
 "GET /api/zones/drop/permits/u1",
 "GET /metrics"]
--- error_code eval
[200, 200, 503, 503, 200, 200, 200, 200, 200, 404, 200, 200, 404, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "X-Sale: SOLD_OUT",
 "Content-Type: application/json", "", "", "", "", "Content-Type: application/json", "", "", "", ""]
--- response_body_like eval
["", "", "", "",
 qr/^\{"items":\[\{"cap":2,"item":"red-42","left":1,"max_permits":null,"permits":1,"registered":0,"stock":2\},\{"cap":1,"item":"blue-43","left":0,"max_permits":null,"permits":1,"registered":0,"stock":1\}\],"next":null\}$/,
 qr/^\{"items":\[\{[^\]]*"item":"red-42"[^\]]*\}\],"next":"AAAAAAAAAAE"\}$/,
 qr/^\{"items":\[\{[^\]]*"item":"blue-43"[^\]]*\}\],"next":"AAAAAAAAAAI"\}$/,
 qr/^\{"items":\[\],"next":null\}$/,
 qr/^\{"cap":1,"item":"blue-43","left":0,"max_permits":null,"permits":1,"registered":0,"stock":1\}$/,
 qr/^\{"error":"no such item in this zone"\}$/,
 qr/^\{"next":null,"permits":\[\{"expires":null,"granted":"[^"]+","item":"red-42","key":"u1","key_base64":"dTE","seq":1\},\{"expires":null,"granted":"[^"]+","item":"blue-43","key":"u2","key_base64":"dTI","seq":2\}\]\}$/,
 qr/^\{"expires":null,"granted":"[^"]+","item":"red-42","key":"u1","key_base64":"dTE","seq":1\}$/,
 qr/^\{"error":"no permit for this key; this zone sells items: add \?item=ITEM"\}$/,
 qr/^\Qflash_sale_items{zone="drop"} 2\E$(?s:.*)^\Qflash_sale_items_sold_out{zone="drop"} 1\E$/m]


=== TEST 2: a stock lowered to what the item has sold: its next buyer gets SOLD_OUT while
other items still sell; raised, a buyer who was SOLD_OUT is ADMITTED; an item the zone has
not seen is made by its PATCH, and the API's stock wins over the configuration's 0
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- more_headers
Content-Type: application/json
--- request eval
["PATCH /api/zones/drop/items/red-42\n{\"max_permits\": 1}",
 "GET /buy?user=u4&sku=red-42", "GET /buy?user=u4&sku=white-44",
 "PATCH /api/zones/drop/items/red-42\n{\"max_permits\": 3}",
 "GET /buy?user=u4&sku=red-42",
 "PATCH /api/zones/drop/items/green\n{\"max_permits\": 1}",
 "GET /buy?user=u5&sku=green",
 "GET /api/zones/drop/items/green"]
--- error_code eval
[200, 503, 200, 200, 200, 200, 200, 200]
--- response_headers eval
["", "X-Sale: SOLD_OUT", "X-Sale: ADMITTED", "", "X-Sale: ADMITTED", "", "X-Sale: ADMITTED", ""]
--- response_body_like eval
[qr/^\{"cap":1,"item":"red-42","left":0,"max_permits":1,"permits":1,"registered":0,"stock":2\}$/,
 "", "",
 qr/^\{"cap":3,"item":"red-42","left":2,"max_permits":3,"permits":1,"registered":0,"stock":2\}$/,
 "",
 qr/^\{"cap":1,"item":"green","left":1,"max_permits":1,"permits":0,"registered":0,"stock":null\}$/,
 "",
 qr/^\{"cap":1,"item":"green","left":0,"max_permits":1,"permits":1,"registered":0,"stock":0\}$/]


=== TEST 3: after a reload that lowers red-42's configured stock to 1, the API's 3 still
wins; set back to null, the configuration's applies again
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- more_headers
Content-Type: application/json
--- request eval
["GET /buy?user=u6&sku=red-42", "GET /buy?user=u7&sku=red-42",
 "GET /api/zones/drop/items/red-42",
 "PATCH /api/zones/drop/items/red-42\n{\"max_permits\": null}",
 "GET /buy?user=u8&sku=red-42", "GET /buy?user=u1&sku=red-42"]
--- error_code eval
[200, 503, 200, 200, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "", "", "X-Sale: SOLD_OUT", "X-Sale: PERMITTED"]
--- response_body_like eval
["", "",
 qr/^\{"cap":3,"item":"red-42","left":0,"max_permits":3,"permits":3,"registered":0,"stock":1\}$/,
 qr/^\{"cap":1,"item":"red-42","left":0,"max_permits":null,"permits":3,"registered":0,"stock":1\}$/,
 "", ""]


=== TEST 4: bad bodies and bad requests are 4xx with a reason, and change nothing; a zone of
one item has no item stock to set, and shows its permits' item as null
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- more_headers
Content-Type: application/json
--- request eval
["PATCH /api/zones/drop/items/red-42\n{\"max_permits\": -1}",
 "PATCH /api/zones/drop/items/red-42\n{\"max_permits\": 1.5}",
 "PATCH /api/zones/drop/items/red-42\n{\"max_permits\": \"3\"}",
 "PATCH /api/zones/drop/items/red-42\n{\"stock\": 3}",
 "PATCH /api/zones/drop/items/red-42\n{\"max_permits\": 9, \"x\": 1}",
 "PATCH /api/zones/drop/items/red-42\n{}",
 "PATCH /api/zones/drop/items/red-42\n{\"max_permits\": ",
 "PATCH /api/zones/drop/items/blue%2D43?max_permits=9\n{\"max_permits\": 9}",
 "PATCH /api/zones/drop/items\n{\"max_permits\": 9}",
 "GET /api/zones/drop/items?x=1", "GET /api/zones/drop/items?limit=0",
 "GET /api/zones/drop/items?after=cmVk", "GET /api/zones/drop/items/",
 "GET /api/zones/drop/permits/u1?item=",
 "GET /api/zones/drop/items/red-42", "GET /api/zones/drop/items/blue-43",
 "GET /single?user=s1", "GET /api/zones/one/permits/s1",
 "PATCH /api/zones/one/items/x\n{\"max_permits\": 9}", "GET /api/zones/one/items",
 "GET /api/zones/nosuch/items"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 405, 400, 400, 400, 400, 400, 200, 200, 200, 200, 409, 200, 404]
--- response_headers eval
["", "", "", "", "", "", "", "", "Allow: GET, HEAD", "", "", "", "", "", "", "", "X-Sale: ADMITTED", "", "", "", ""]
--- response_body_like eval
[qr/^\{"error":"max_permits: expected a whole number from 0 to 9007199254740991 or null"\}$/,
 qr/^\{"error":"max_permits: expected a whole number/,
 qr/^\{"error":"max_permits: expected a whole number/,
 qr/^\{"error":"unknown field \\"stock\\""\}$/,
 qr/^\{"error":"unknown field \\"x\\""\}$/,
 qr/^\{"error":"nothing to change: give max_permits"\}$/,
 qr/^\{"error":"malformed JSON: /,
 qr/^\{"error":"unknown parameter \\"max_permits\\" here"\}$/,
 qr/^\{"error":"method not allowed here"\}$/,
 qr/^\{"error":"unknown parameter \\"x\\" here"\}$/,
 qr/^\{"error":"bad limit: a number from 1 to 1000"\}$/,
 qr/^\{"error":"bad after: expected the \\"next\\" of the page before"\}$/,
 qr/^\{"error":"no item after items\/: an item is a string of 1 to 256 bytes"\}$/,
 qr/^\{"error":"bad item: an item is a string of 1 to 256 bytes"\}$/,
 qr/^\{"cap":1,"item":"red-42","left":0,"max_permits":null,"permits":3,"registered":0,"stock":1\}$/,
 qr/^\{"cap":1,"item":"blue-43","left":0,"max_permits":null,"permits":1,"registered":0,"stock":1\}$/,
 "",
 qr/^\{"expires":null,"granted":"[^"]+","item":null,"key":"s1","key_base64":"czE","seq":1\}$/,
 qr/^\{"error":"zone \\"one\\" sells one item \(no flash_sale_item\): set its max_permits with PATCH zones\/one"\}$/,
 qr/^\{"items":\[\],"next":null\}$/,
 qr/^\{"error":"no zone \\"nosuch\\""\}$/]


=== TEST 5: a body that is not JSON is refused (415), and so is another site's request
(403): nothing changes
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- more_headers
Origin: http://evil.example
Content-Type: application/json
--- request eval
["PATCH /api/zones/drop/items/red-42\n{\"max_permits\": 100}",
 "DELETE /api/zones/drop/permits/u1?item=red-42",
 "GET /api/zones/drop/items/red-42"]
--- error_code eval
[403, 403, 200]
--- response_body_like eval
[qr/^\{"error":"refused: a request from another site \(Origin \\"http:\/\/evil.example\\"\)"\}$/,
 qr/^\{"error":"refused: /,
 qr/"max_permits":null,"permits":3,/]


=== TEST 6: a PATCH without Content-Type: application/json is refused (415)
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- request eval
["PATCH /api/zones/drop/items/red-42\n{\"max_permits\": 100}", "GET /api/zones/drop/items/red-42"]
--- error_code eval
[415, 200]
--- response_body_like eval
[qr/^\{"error":"send the body as Content-Type: application\/json"\}$/,
 qr/"max_permits":null,"permits":3,/]


=== TEST 7: revoking a buyer's permit for an item frees that item's slot: the item's next
buyer is ADMITTED; without ?item=, or with another item, nothing is revoked
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- request eval
["GET /buy?user=u9&sku=blue-43",
 "DELETE /api/zones/drop/permits/u2", "DELETE /api/zones/drop/permits/u2?item=red-42",
 "GET /api/zones/drop/items/blue-43",
 "DELETE /api/zones/drop/permits/u2?item=blue-43",
 "GET /api/zones/drop/permits/u2?item=blue-43",
 "GET /buy?user=u9&sku=blue-43", "GET /buy?user=u2&sku=blue-43",
 "GET /api/zones/drop/items/blue-43"]
--- error_code eval
[503, 404, 404, 200, 200, 404, 200, 503, 200]
--- response_headers eval
["X-Sale: SOLD_OUT", "", "", "", "", "", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", ""]
--- response_body_like eval
["", qr/"error":"no permit for this key; this zone sells items/, qr/^\{"error":"no permit for this key"\}$/,
 qr/"permits":1,/, qr/^\{"revoked":1\}$/, qr/"error":"no permit for this key"/, "", "",
 qr/^\{"cap":1,"item":"blue-43","left":0,"max_permits":null,"permits":1,"registered":0,"stock":1\}$/]


=== TEST 8: an operator's grant names the item: the buyer passes for that item only; the
metrics count the zone's items and those at their cap, with no label per item
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- more_headers
Content-Type: application/json
--- request eval
["POST /api/zones/drop/permits\n[{\"key\": \"vip\", \"item\": \"white-44\"}, {\"key\": \"vip\", \"item\": \"white-44\"}]",
 "GET /buy?user=vip&sku=white-44", "GET /buy?user=vip&sku=red-42",
 "GET /api/zones/drop/permits/vip?item=white-44",
 "GET /api/zones/drop/items/white-44",
 "GET /metrics"]
--- error_code eval
[200, 200, 503, 200, 200, 200]
--- response_headers eval
["", "X-Sale: PERMITTED", "X-Sale: SOLD_OUT", "", "", ""]
--- response_body_like eval
[qr/^\{"already":1,"granted":1,/, "", "",
 qr/"item":"white-44","key":"vip"/,
 qr/^\{"cap":5,"item":"white-44","left":3,"max_permits":null,"permits":2,"registered":0,"stock":5\}$/,
 qr/^\Qflash_sale_items{zone="drop"} 4\E$(?s:.*)^\Qflash_sale_items_sold_out{zone="drop"} 3\E$(?!(?s:.*)item=)/m]



=== TEST 9: a grant in a zone of items names each permit's item, and one in a zone of one
item names none (a permit no request could use is refused, and nothing is granted); a grant
over an item's stock says so
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- more_headers
Content-Type: application/json
--- request eval
["POST /api/zones/drop/permits\n[{\"key\": \"g1\", \"item\": \"blue-43\"}, \"g2\"]",
 "GET /api/zones/drop/permits/g1?item=blue-43",
 "POST /api/zones/one/permits\n[{\"key\": \"g3\", \"item\": \"blue-43\"}]",
 "GET /api/zones/one/permits/g3",
 "POST /api/zones/drop/permits\n[{\"key\": \"g4\", \"item\": \"blue-43\"}]"]
--- error_code eval
[400, 404, 400, 404, 200]
--- response_body_like eval
[qr/^\{"error":"this zone sells items: give each permit its \\"item\\""\}$/,
 qr/no permit/,
 qr/^\{"error":"this zone sells one item \(no flash_sale_item\): a permit has no \\"item\\""\}$/,
 qr/no permit/,
 qr/"granted":1,.*"over_cap":true/]



=== TEST 10: an item no request has been decided for takes the zone's cap: a grant over it
says so, and the item shows it; ?item= on a zone of one item is a 400, as a grant's item is
--- http_config eval: $::HttpConfigLowered
--- config eval: $::Config
--- more_headers
Content-Type: application/json
--- request eval
["PATCH /api/zones/drop\n{\"max_permits\": 1}",
 "POST /api/zones/drop/permits\n[{\"key\": \"n1\", \"item\": \"fresh\"}, {\"key\": \"n2\", \"item\": \"fresh\"}]",
 "GET /api/zones/drop/items/fresh",
 "PATCH /api/zones/drop\n{\"max_permits\": null}",
 "GET /api/zones/one/permits/s1?item=x",
 "DELETE /api/zones/one/permits/s1?item=x",
 "GET /api/zones/one/permits/s1"]
--- error_code eval
[200, 200, 200, 200, 400, 400, 200]
--- response_body_like eval
["", qr/"granted":2,.*"over_cap":true/,
 qr/^\{"cap":1,"item":"fresh","left":0,"max_permits":null,"permits":2,"registered":0,"stock":null\}$/,
 "",
 qr/^\{"error":"this zone sells one item \(no flash_sale_item\): a permit has no \\"item\\""\}$/,
 qr/a permit has no/,
 qr/"key":"s1"/]
