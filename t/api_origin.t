# The admin API takes no orders from other sites' pages (cross-site request forgery): a browser
# inside the operator's network lets any page POST a text/plain or form body to it, without a
# preflight. A body must be application/json (which another site's page cannot send without a
# preflight, and the API grants none), and a request the browser marks as coming from another
# site (Origin, Sec-Fetch-Site) is refused. Every refusal changes nothing; curl with the
# documented header keeps working. With the API in a server of its own names and a default
# server that answers nothing (as the README and the demo do), a page that points its own name
# at the API's address (DNS rebinding) reaches nothing.

use Test::Nginx::Socket 'no_plan';

our $HttpConfig = <<'_EOC_';
    flash_sale_zone $arg_user zone=sale:1m;
_EOC_

our $Locations = <<'_EOC_';
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ {
        allow 127.0.0.1;
        deny all;
        flash_sale_api;
    }
_EOC_

master_on();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: what a form on another site can send is refused, and mallory holds no permit
--- http_config eval: $::HttpConfig
--- config eval: $::Locations
--- pipelined_requests eval
["POST /api/zones/sale/permits\n[\"mallory\"]",
 "POST /api/zones/sale/permits\n[\"mallory\"]",
 "POST /api/zones/sale/permits\n%5B%22mallory%22%5D=",
 "POST /api/zones/sale/permits\n[\"mallory\"]",
 "PATCH /api/zones/sale\n{\"max_permits\": 100}",
 "GET /api/zones/sale/permits/mallory", "GET /api/zones/sale", "GET /sale?user=mallory"]
--- more_headers eval
["Content-Type: text/plain\nOrigin: http://evil.example",
 "Content-Type: text/plain",
 "Content-Type: application/x-www-form-urlencoded",
 "",
 "Content-Type: text/plain",
 "", "", ""]
--- error_code eval
[403, 415, 415, 415, 415, 404, 200, 200]
--- response_headers eval
["", "", "", "", "", "", "", "X-Sale: ADMITTED"]
--- response_body_like eval
[qr/^\{"error":"refused: a request from another site \(Origin \\"http:\/\/evil\.example\\"\)"\}$/,
 qr/^\{"error":"send the body as Content-Type: application\/json"\}$/,
 qr/^\{"error":"send the body as Content-Type: application\/json"\}$/,
 qr/^\{"error":"send the body as Content-Type: application\/json"\}$/,
 qr/^\{"error":"send the body as Content-Type: application\/json"\}$/,
 qr/^\{"error":"no permit for this key"\}$/,
 qr/"granted":0,.*"max_permits":1,.*"overrides":\{"block_ratio":null,"end":null,"max_permits":null,"queue_rate":null,"start":null\},"permits":0,/,
 "ok"]


=== TEST 2: JSON sent by another site's page is refused too (Origin, Sec-Fetch-Site), and a
DELETE from one revokes nothing
--- http_config eval: $::HttpConfig
--- config eval: $::Locations
--- pipelined_requests eval
["GET /sale?user=amy",
 "POST /api/zones/sale/permits\n[\"mallory\"]",
 "POST /api/zones/sale/permits\n[\"mallory\"]",
 "POST /api/zones/sale/permits\n[\"mallory\"]",
 "DELETE /api/zones/sale/permits/amy",
 "DELETE /api/zones/sale/permits",
 "PATCH /api/zones/sale\n{\"max_permits\": 100}",
 "GET /api/zones/sale"]
--- more_headers eval
["",
 "Content-Type: application/json\nOrigin: http://evil.example",
 "Content-Type: application/json\nOrigin: null",
 "Content-Type: application/json\nSec-Fetch-Site: cross-site",
 "Origin: http://evil.example",
 "Sec-Fetch-Site: same-site",
 "Content-Type: application/json\nOrigin: http://localhost:1",
 ""]
--- error_code eval
[200, 403, 403, 403, 403, 403, 403, 200]
--- response_body_like eval
["ok",
 qr/"error":"refused: a request from another site \(Origin \\"http:\/\/evil\.example\\"\)"/,
 qr/"error":"refused: a request from another site \(Origin \\"null\\"\)"/,
 qr/"error":"refused: Sec-Fetch-Site is \\"cross-site\\", not same-origin"/,
 qr/"error":"refused: a request from another site/,
 qr/"error":"refused: Sec-Fetch-Site is \\"same-site\\", not same-origin"/,
 qr/"error":"refused: a request from another site/,
 qr/"granted":1,.*"max_permits":1,.*"overrides":\{"block_ratio":null,"end":null,"max_permits":null,"queue_rate":null,"start":null\},"permits":1,/]


=== TEST 3: the operator's own tools work: curl with the documented header, and a page of
the API's own origin (the Host it was sent to)
--- http_config eval: $::HttpConfig
--- config eval: $::Locations
--- pipelined_requests eval
["POST /api/zones/sale/permits\n[\"vip\"]",
 "POST /api/zones/sale/permits\n[\"press\"]",
 "PATCH /api/zones/sale\n{\"max_permits\": 5}",
 "DELETE /api/zones/sale/permits/press",
 "GET /api/zones/sale/permits"]
--- more_headers eval
["Content-Type: application/json",
 "Content-Type: application/json; charset=utf-8\nOrigin: http://localhost\nSec-Fetch-Site: same-origin",
 "Content-Type: application/json",
 "",
 ""]
--- error_code eval
[200, 200, 200, 200, 200]
--- response_body_like eval
[qr/"granted":1/, qr/"granted":1/, qr/"overrides":\{"block_ratio":null,"end":null,"max_permits":5,/,
 qr/^\{"revoked":1\}$/, qr/^\{"next":null,"permits":\[\{[^\]]*"key":"vip"[^\]]*\}\]\}$/]


=== TEST 4: a browser's preflight gets no grant (405, no Access-Control-Allow-* headers), so a
page of another site cannot send JSON or a DELETE
--- http_config eval: $::HttpConfig
--- config eval: $::Locations
--- request
OPTIONS /api/zones/sale/permits
--- more_headers
Origin: http://evil.example
Access-Control-Request-Method: POST
Access-Control-Request-Headers: content-type
--- error_code: 405
--- response_headers
Access-Control-Allow-Origin:
Access-Control-Allow-Methods:
Access-Control-Allow-Headers:
Allow: GET, HEAD, POST, DELETE



=== TEST 5: DNS rebinding: a page whose name points at the API's address never reaches it past a default server that answers nothing
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    server {
        listen $TEST_NGINX_SERVER_PORT default_server;
        return 444;
    }
--- config
    location /api/ { flash_sale_api; }
--- request eval
["POST /api/zones/sale/permits\n[\"mallory\"]", "GET /api/zones/sale/permits/mallory"]
--- more_headers eval
["Host: evil.example\nOrigin: http://evil.example\nSec-Fetch-Site: same-origin\nContent-Type: application/json", ""]
--- error_code eval
["", 404]
--- response_body_like eval
["", qr/"error":"no permit for this key"/]
