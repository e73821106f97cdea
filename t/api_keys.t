# Every permit can be listed, read and revoked through the admin API whatever its key's bytes:
# $binary_remote_addr keys (4 or 16 bytes, zero bytes included) and keys that are not UTF-8.
# Each permit shows "key_base64" (lossless), "key" (the text, or null), and for an address key
# "address"; listing cursors round-trip; `?encoding=base64` addresses any key.

use Test::Nginx::Socket 'no_plan';

our $AddrConfig = <<'_EOC_';
    flash_sale_zone $binary_remote_addr zone=ip:1m;
_EOC_

our $AddrLocations = <<'_EOC_';
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=ip;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
_EOC_

master_on();
workers(2);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: addresses that a lossy text shows alike are two permits, each shown as its address
--- http_config eval: $::AddrConfig
--- config eval: $::AddrLocations
--- pipelined_requests eval
["GET /sale", "GET /sale", "GET /sale", "GET /api/zones/ip/permits"]
--- more_headers eval
["X-Forwarded-For: 127.0.0.200", "X-Forwarded-For: 127.0.0.201", "X-Forwarded-For: 2001:db8::1", ""]
--- error_code eval
[200, 200, 200, 200]
--- response_body_like eval
["ok", "ok", "ok",
 qr/^\{"next":null,"permits":\[\{"address":"127\.0\.0\.200","expires":null,"granted":"[^"]+","item":null,"key":null,"key_base64":"fwAAyA","seq":1\},\{"address":"127\.0\.0\.201","expires":null,"granted":"[^"]+","item":null,"key":null,"key_base64":"fwAAyQ","seq":2\},\{"address":"2001:db8::1","expires":null,"granted":"[^"]+","item":null,"key":null,"key_base64":"IAENuAAAAAAAAAAAAAAAAQ","seq":3\}\]\}$/]


=== TEST 2: a page at a time, each cursor leads on to the next key, and back to every permit
--- http_config eval: $::AddrConfig
--- config eval: $::AddrLocations
--- pipelined_requests eval
["GET /sale", "GET /sale", "GET /sale",
 "GET /api/zones/ip/permits?limit=1", "GET /api/zones/ip/permits?limit=1&after=gAAAAAAAAAAAAAAAAAAAAX8AAMg",
 "GET /api/zones/ip/permits?limit=1&after=gAAAAAAAAAAAAAAAAAAAAn8AAMk",
 "GET /api/zones/ip/permits?limit=1&after=gAAAAAAAAAAAAAAAAAAAAyABDbgAAAAAAAAAAAAAAAE"]
--- more_headers eval
["X-Forwarded-For: 127.0.0.200", "X-Forwarded-For: 127.0.0.201", "X-Forwarded-For: 2001:db8::1",
 "", "", "", ""]
--- response_body_like eval
["ok", "ok", "ok",
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAAX8AAMg","permits":\[\{"address":"127\.0\.0\.200",[^\]]*\]\}$/,
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAAn8AAMk","permits":\[\{"address":"127\.0\.0\.201",[^\]]*\]\}$/,
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAAyABDbgAAAAAAAAAAAAAAAE","permits":\[\{"address":"2001:db8::1",[^\]]*\]\}$/,
 qr/^\{"next":null,"permits":\[\]\}$/]


=== TEST 3: a key with zero bytes (nginx refuses %00 in a path) is read and revoked by its
key_base64, and its slot goes back to the sale
--- http_config eval: $::AddrConfig
--- config
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=ip;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- pipelined_requests eval
["GET /sale", "GET /sale", "GET /sale",
 "GET /api/zones/ip/permits/fwAAyA?encoding=base64",
 "GET /api/zones/ip/permits/fwAAyA==?encoding=base64",
 "DELETE /api/zones/ip/permits/fwAAyA?encoding=base64",
 "GET /api/zones/ip/permits/fwAAyA?encoding=base64",
 "GET /sale", "GET /sale"]
--- more_headers eval
["X-Forwarded-For: 127.0.0.200", "X-Forwarded-For: 127.0.0.200", "X-Forwarded-For: 127.0.0.201",
 "", "", "", "", "X-Forwarded-For: 127.0.0.201", "X-Forwarded-For: 127.0.0.200"]
--- error_code eval
[200, 200, 503, 200, 200, 200, 404, 200, 503]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: PERMITTED", "X-Sale: SOLD_OUT", "", "", "", "",
 "X-Sale: ADMITTED", "X-Sale: SOLD_OUT"]
--- response_body_like eval
["ok", "ok", "SOLD_OUT",
 qr/^\{"address":"127\.0\.0\.200","expires":null,"granted":"[^"]+","item":null,"key":null,"key_base64":"fwAAyA","seq":1\}$/,
 qr/"key_base64":"fwAAyA","seq":1\}$/,
 qr/^\{"revoked":1\}$/, qr/"error":"no permit for this key"/, "ok", "SOLD_OUT"]


=== TEST 4: keys that are not UTF-8 ("\xff1") beside text keys: listed without loss, the
cursor round-trips, and both the percent-encoded path and key_base64 reach the key
--- http_config
    flash_sale_zone $http_x_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- pipelined_requests eval
["GET /sale", "GET /sale", "GET /sale",
 "GET /api/zones/sale/permits?limit=1", "GET /api/zones/sale/permits?limit=1&after=gAAAAAAAAAAAAAAAAAAAAf8x",
 "GET /api/zones/sale/permits?limit=1&after=gAAAAAAAAAAAAAAAAAAAAv8y",
 "GET /api/zones/sale/permits/%FF1", "GET /api/zones/sale/permits/_zI?encoding=base64",
 "DELETE /api/zones/sale/permits/%FF1", "GET /api/zones/sale/permits"]
--- more_headers eval
["X-User: \xff1", "X-User: \xff2", "X-User: bob", "", "", "", "", "", "", ""]
--- error_code eval
[200, 200, 200, 200, 200, 200, 200, 200, 200, 200]
--- response_body_like eval
["ok", "ok", "ok",
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAAf8x","permits":\[\{"expires":null,"granted":"[^"]+","item":null,"key":null,"key_base64":"_zE","seq":1\}\]\}$/,
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAAv8y","permits":\[\{[^\]]*"key":null,"key_base64":"_zI","seq":2\}\]\}$/,
 qr/^\{"next":"gAAAAAAAAAAAAAAAAAAAA2JvYg","permits":\[\{[^\]]*"key":"bob","key_base64":"Ym9i","seq":3\}\]\}$/,
 qr/"key":null,"key_base64":"_zE","seq":1\}$/,
 qr/"key":null,"key_base64":"_zI","seq":2\}$/,
 qr/^\{"revoked":1\}$/,
 qr/^\{"next":null,"permits":\[\{[^\]]*"key_base64":"_zI","seq":2\},\{[^\]]*"key":"bob","key_base64":"Ym9i","seq":3\}\]\}$/]


=== TEST 5: an operator grants a permit to a key that is not text, by its key_base64
--- http_config eval: $::AddrConfig
--- config eval: $::AddrLocations
--- pipelined_requests eval
["POST /api/zones/ip/permits\n[{\"key_base64\": \"fwAAyg\", \"ttl\": \"1h 30m\"}]",
 "GET /sale", "GET /api/zones/ip/permits/fwAAyg?encoding=base64"]
--- more_headers eval
["Content-Type: application/json", "X-Forwarded-For: 127.0.0.202", ""]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["", "X-Sale: PERMITTED", ""]
--- response_body_like eval
[qr/^\{"already":0,"granted":1,"over_cap":false,"permits":1,"zone_full":0\}$/, "ok",
 qr/^\{"address":"127\.0\.0\.202","expires":"[^"]+","granted":"[^"]+","item":null,"key":null,"key_base64":"fwAAyg","seq":1\}$/]


=== TEST 6: a mistyped or misplaced parameter is refused and changes nothing: a DELETE of
the whole list with ?encoding=, ?limit= or an empty key revokes nobody
--- http_config eval: $::AddrConfig
--- config eval: $::AddrLocations
--- pipelined_requests eval
["GET /sale",
 "DELETE /api/zones/ip/permits?encoding=base64",
 "DELETE /api/zones/ip/permits?limit=1",
 "DELETE /api/zones/ip/permits/",
 "DELETE /api/zones/ip/permits/fwAAyA?encodng=base64",
 "DELETE /api/zones/ip/permits/fwAAyA?encoding=hex",
 "GET /api/zones/ip/permits/f*AA?encoding=base64",
 "GET /api/zones/ip/permits?after=not+base64",
 "GET /api/zones/ip/permits"]
--- more_headers eval
["X-Forwarded-For: 127.0.0.200", "", "", "", "", "", "", "", ""]
--- error_code eval
[200, 400, 400, 400, 400, 400, 400, 400, 200]
--- response_body_like eval
["ok",
 qr/^\{"error":"unknown parameter \\"encoding\\" here"\}$/,
 qr/^\{"error":"unknown parameter \\"limit\\" here"\}$/,
 qr/^\{"error":"no key after permits\/: a key is 1 to 1024 bytes"\}$/,
 qr/^\{"error":"unknown parameter \\"encodng\\" here"\}$/,
 qr/^\{"error":"bad encoding: expected base64"\}$/,
 qr/^\{"error":"bad base64 key"\}$/,
 qr/^\{"error":"bad after: expected the \\"next\\" of the page before"\}$/,
 qr/"key_base64":"fwAAyA","seq":1\}\]\}$/]
