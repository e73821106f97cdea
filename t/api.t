# flash_sale_api: the zones as JSON; permits listed page by page, granted, revoked, cleared; the
# running sale changed without a reload. Bad requests get a 4xx with {"error": ...} and change
# nothing.

use Test::Nginx::Socket 'no_plan';

master_on();
workers(2);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: zones, a zone, permits, one permit (keys are percent-encoded in paths: $arg_user
keeps the client's escapes, so the key "bob%2Fsmith" is addressed as bob%252Fsmith)
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 3;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ {
        allow 127.0.0.1;
        deny all;
        flash_sale_api;
    }
--- request eval
["GET /sale?user=alice", "GET /sale?user=bob%2Fsmith", "GET /api/zones",
 "GET /api/zones/sale", "GET /api/zones/sale/permits", "GET /api/zones/sale/permits/bob%252Fsmith",
 "GET /api/zones/sale/permits/carol", "GET /api/zones/nosuch", "GET /api/other"]
--- error_code eval
[200, 200, 200, 200, 200, 200, 404, 404, 404]
--- response_headers eval
["", "", "Content-Type: application/json", "", "", "", "", "", ""]
--- response_body_like eval
["", "",
 qr/^\[\{.*"name":"sale".*\}\]$/,
 qr/"key":"\$arg_user".*"max_permits":3.*"name":"sale".*"permits":2.*"requests":\{.*"ADMITTED":2/,
 qr/^\{"next":null,"permits":\[\{"expires":null,"granted":"\d{4}-\d\d-\d\dT[\d:.]+Z","item":null,"key":"alice","key_base64":"YWxpY2U","seq":1\},\{.*"key":"bob%2Fsmith","key_base64":"Ym9iJTJGc21pdGg","seq":2\}\]\}$/,
 qr/^\{"expires":null,"granted":"[^"]+","item":null,"key":"bob%2Fsmith","key_base64":"Ym9iJTJGc21pdGg","seq":2\}$/,
 qr/^\{"error":"no permit for this key"\}$/,
 qr/^\{"error":"no zone \\"nosuch\\""\}$/,
 qr/^\{"error":"no such endpoint; try GET zones"\}$/]


=== TEST 2: permits page by page with limit and after (the cursor is the page's "next", the
place of its last permit); a place whose permit is gone leads on from there
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- request eval
["GET /sale?user=u1", "GET /sale?user=u2", "GET /sale?user=u3",
 "GET /api/zones/sale/permits?limit=2", "GET /api/zones/sale/permits?limit=2&after=gAAAAAAAAAAAAAAAAAAAAnUy",
 "GET /api/zones/sale/permits?after=gAAAAAAAAAAAAAAAAAAAY25vYm9keQ", "GET /api/zones/sale/permits?limit=0",
 "DELETE /api/zones/sale/permits/u2", "GET /api/zones/sale/permits?after=gAAAAAAAAAAAAAAAAAAAAnUy"]
--- error_code eval
[200, 200, 200, 200, 200, 200, 400, 200, 200]
--- response_body_like eval
["", "", "",
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAAnUy","permits":\[\{[^\]]*"key":"u1".*"key":"u2"[^\]]*\]\}$/,
 qr/^\{"next":null,"permits":\[\{[^\]]*"key":"u3","key_base64":"dTM","seq":3\}\]\}$/,
 qr/^\{"next":null,"permits":\[\]\}$/,
 qr/"error":"bad limit: a number from 1 to 1000"/,
 qr/^\{"revoked":1\}$/,
 qr/^\{"next":null,"permits":\[\{[^\]]*"key":"u3","key_base64":"dTM","seq":3\}\]\}$/]


=== TEST 3: an operator's grants pass the gate, even over the cap, and say so
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- more_headers
Content-Type: application/json
--- request eval
["POST /api/zones/sale/permits\n[\"vip\", {\"key\": \"press\", \"ttl\": \"1h\"}, \"vip\"]",
 "GET /sale?user=vip", "GET /sale?user=press", "GET /api/zones/sale/permits/press"]
--- error_code eval
[200, 200, 200, 200]
--- response_body_like eval
[qr/^\{"already":1,"granted":2,"over_cap":true,"permits":2,"zone_full":0\}$/, "", "",
 qr/"expires":"\d{4}-[^"]+Z","granted":"[^"]+","item":null,"key":"press","key_base64":"cHJlc3M","seq":2/]
--- response_headers eval
["", "X-Sale: PERMITTED", "X-Sale: PERMITTED", ""]


=== TEST 4: revoking a permit gives its slot back to the sale; clearing empties the zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- request eval
["GET /sale?user=a", "GET /sale?user=b", "DELETE /api/zones/sale/permits/a",
 "DELETE /api/zones/sale/permits/a", "GET /sale?user=b", "GET /sale?user=a",
 "DELETE /api/zones/sale/permits", "GET /api/zones/sale/permits", "GET /sale?user=a",
 "GET /api/zones/sale"]
--- error_code eval
[200, 503, 200, 404, 200, 503, 200, 200, 200, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "", "", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "", "",
 "X-Sale: ADMITTED", ""]
--- response_body_like eval
["", "", qr/^\{"revoked":1\}$/, qr/"error":"no permit for this key"/, "", "",
 qr/^\{"revoked":1\}$/, qr/^\{"next":null,"permits":\[\]\}$/, "",
 qr/"granted":3,.*"revoked":2/]


=== TEST 5: PATCH changes the running sale in every worker, and null gives the file back
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_start 2099-01-01T00:00:00Z;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- more_headers
Content-Type: application/json
--- request eval
["GET /sale?user=a",
 "PATCH /api/zones/sale\n{\"start\": \"2021-08-08T00:00:00Z\", \"max_permits\": 2}",
 "GET /sale?user=a", "GET /sale?user=b", "GET /sale?user=c",
 "PATCH /api/zones/sale\n{\"block_ratio\": 1, \"max_permits\": 5}", "GET /sale?user=c",
 "PATCH /api/zones/sale\n{\"start\": null}", "GET /sale?user=a"]
--- error_code eval
[503, 200, 200, 200, 503, 200, 503, 200, 503]
--- response_headers eval
["X-Sale: NOT_STARTED", "", "X-Sale: ADMITTED", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "",
 "X-Sale: BLOCKED", "", "X-Sale: NOT_STARTED"]
--- response_body_like eval
["", qr/"overrides":\{"block_ratio":null,"end":null,"max_permits":2,"queue_rate":null,"start":"2021-08-08T00:00:00.000Z"\}/,
 "", "", "", qr/"overrides":\{"block_ratio":1.0,"end":null,"max_permits":5,/, "",
 qr/"overrides":\{"block_ratio":1.0,"end":null,"max_permits":5,"queue_rate":null,"start":null\}/, ""]


=== TEST 6: bad requests get a 4xx with a reason, and change nothing
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ {
        client_body_buffer_size 1k;
        flash_sale_api;
    }
--- more_headers
Content-Type: application/json
--- request eval
["POST /api/zones/sale/permits\n[\"a\", ",
 "POST /api/zones/sale/permits\n{\"key\": \"a\"}",
 "POST /api/zones/sale/permits\n[{\"key\": \"a\", \"ttl\": \"forever\"}]",
 "POST /api/zones/nosuch/permits\n[\"a\"]",
 "PATCH /api/zones/sale\n{\"block_ratio\": 7}",
 "PATCH /api/zones/sale\n{\"start\": \"2022-01-01T00:00:00Z\", \"end\": \"2021-01-01T00:00:00Z\"}",
 "PATCH /api/zones/sale\n{\"colour\": \"red\"}",
 "PUT /api/zones/sale/permits\n[\"a\"]",
 "POST /api/zones\n[]",
 "POST /api/zones/sale/permits\n[\"" . ("x" x 20000) . "\"]",
 "GET /api/zones/sale/permits?after=%zz",
 "GET /api/zones/sale"]
--- error_code eval
[400, 400, 400, 404, 400, 400, 400, 405, 405, 413, 400, 200]
--- response_headers eval
["", "", "", "", "", "", "", "Allow: GET, HEAD, POST, DELETE", "Allow: GET, HEAD", "", "", ""]
--- response_body_like eval
[qr/^\{"error":"malformed JSON: /, qr/"error":"expected a JSON array of keys"/,
 qr/"error":"invalid ttl \\"forever\\": expected seconds/, qr/"error":"no zone \\"nosuch\\""/,
 qr/"error":"block_ratio: expected a number from 0 to 1 or null"/,
 qr/"error":"end must be after start"/, qr/"error":"unknown field \\"colour\\""/,
 qr/"error":"method not allowed here"/, qr/"error":"method not allowed here"/,
 qr/"error":"the body is larger than client_body_buffer_size"/, qr/"error":"bad after: expected the \\"next\\" of the page before"/,
 qr/"granted":0,.*"overrides":\{"block_ratio":null,"end":null,"max_permits":null,"queue_rate":null,"start":null\},"permits":0,/]
--- no_error_log
[alert]
[crit]
