# flash_sale_queue's settings: what nginx -t refuses, with the directive, the value and
# file:line, and the variables a gated request sees when it is not in line.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a rate limit_req would not take
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_queue rate=20r/h;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/invalid value "rate=20r\/h" in "flash_sale_queue" directive, expected rate=RATE such as rate=20r\/s or rate=600r\/m, then optionally idle=TIME and refresh=TIME of more than zero, or off in \S+nginx\.conf:\d+/

=== TEST 2: a rate of zero
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_queue rate=0r/s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/invalid value "rate=0r\/s" in "flash_sale_queue" directive/

=== TEST 3: no rate
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_queue idle=1m;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/"flash_sale_queue" needs rate=RATE, such as rate=20r\/s in \S+nginx\.conf:\d+/

=== TEST 4: an idle time of zero
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s idle=0s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/invalid value "idle=0s" in "flash_sale_queue" directive/

=== TEST 5: an unknown parameter
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s burst=5;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/invalid value "burst=5" in "flash_sale_queue" directive/

=== TEST 6: twice in one location
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s;
        flash_sale_queue rate=2r/s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/"flash_sale_queue" directive is duplicate in \S+nginx\.conf:\d+/

=== TEST 7: a block ratio with a draw per request would only delay joining
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_block_ratio 0.5;
        flash_sale_queue rate=1r/s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/"flash_sale_queue" with a "flash_sale_block_ratio" needs "flash_sale_draw per_key"/

=== TEST 8: with a draw per key the ratio decides who joins
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        flash_sale_draw per_key;
        flash_sale_queue rate=1r/s;
        add_header X-Sale $flash_sale_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "shop\n"; }
--- request
GET /a?user=amy
--- error_code: 503
--- response_headers
X-Sale: BLOCKED

=== TEST 9: off, inherited from the server, switches the line off in a location
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    flash_sale_queue rate=1r/s;
    location /a {
        flash_sale zone=sale;
        flash_sale_queue off;
        add_header X-Sale $flash_sale_status always;
        add_header X-Position "[$flash_sale_position]" always;
        add_header X-Wait "[$flash_sale_wait]" always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "shop\n"; }
--- pipelined_requests eval
["GET /a?user=a", "GET /a?user=b", "GET /a?user=c"]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["X-Sale: ADMITTED\nX-Position: []\nX-Wait: []", "X-Sale: ADMITTED", "X-Sale: ADMITTED"]

=== TEST 10: inherited from the server, the line paces the location
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    flash_sale_queue rate=1r/s refresh=5s;
    location /a {
        flash_sale zone=sale;
        add_header X-Sale $flash_sale_status always;
        add_header X-Position "[$flash_sale_position]" always;
        add_header X-Wait "[$flash_sale_wait]" always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "shop\n"; }
--- pipelined_requests eval
["GET /a?user=a", "GET /a?user=b", "GET /a?user=c", "GET /a?user=b"]
--- error_code eval
[200, 503, 503, 503]
--- response_headers eval
["X-Sale: ADMITTED\nX-Position: []", "X-Sale: QUEUED\nX-Position: [0]\nX-Wait: [1]\nCache-Control: no-store", "X-Sale: QUEUED\nX-Position: [1]\nX-Wait: [2]", "X-Sale: QUEUED\nX-Position: [0]"]

=== TEST 11: an own page for the line shows the place and the wait
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s refresh=5s;
        error_page 503 /line.html;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location = /line.html {
        internal;
        default_type text/html;
        return 503 '<!DOCTYPE html><title>In line</title><p>$flash_sale_status: $flash_sale_position ahead of you, about $flash_sale_wait s</p>';
    }
    location /backend { return 200 "shop\n"; }
--- pipelined_requests eval
["GET /a?user=a", "GET /a?user=b", "GET /a?user=c"]
--- error_code eval
[200, 503, 503]
--- response_body eval
["shop\n",
 "<!DOCTYPE html><title>In line</title><p>QUEUED: 0 ahead of you, about 1 s</p>",
 "<!DOCTYPE html><title>In line</title><p>QUEUED: 1 ahead of you, about 2 s</p>"]

=== TEST 12: a program asks for JSON and gets the place, the wait and when to ask again
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s refresh=5s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "shop\n"; }
--- pipelined_requests eval
["GET /a?user=a", "GET /a?user=b", "GET /a?user=c", "GET /a?user=d"]
--- more_headers
Accept: application/json
--- error_code eval
[200, 503, 503, 503]
--- response_headers eval
["", "Content-Type: application/json\nVary: Accept", "Content-Type: application/json", "Content-Type: application/json"]
--- response_body_like eval
[qr/^shop\n$/,
 qr/^\{"status": "QUEUED", "position": 0, "wait_seconds": 1, "retry_after": 1, "starts_in": null, "ends_in": null\}\n?$/,
 qr/^\{"status": "QUEUED", "position": 1, "wait_seconds": 2, "retry_after": [12], "starts_in": null, "ends_in": null\}\n?$/,
 qr/^\{"status": "QUEUED", "position": 2, "wait_seconds": 3, "retry_after": [234], "starts_in": null, "ends_in": null\}\n?$/]

=== TEST 13: a refresh that would outlast idle is refused: a page that obeys it would lose its place
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s idle=10s refresh=10s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
--- must_die
--- error_log eval
qr/"flash_sale_queue" needs idle= longer than refresh= and a fifth, with a second to spare: a waiter's page asks again after up to that long in \S+nginx\.conf:\d+/

=== TEST 14: the API refuses a block ratio where the line draws per request, as nginx -t does
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_queue rate=1r/s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /api/ { flash_sale_api; }
--- pipelined_requests eval
["PATCH /api/zones/sale\n{\"block_ratio\": 0.9}", "GET /api/zones/sale", "PATCH /api/zones/sale\n{\"block_ratio\": 0}"]
--- more_headers
Content-Type: application/json
--- error_code eval
[400, 200, 200]
--- response_body_like eval
[qr/\{"error":"block_ratio: this zone's line draws per request, where a buyer turned away draws again and joins anyway; set flash_sale_draw per_key first"\}/,
 qr/"overrides":\{"block_ratio":null,/,
 qr/"overrides":\{"block_ratio":0.0,/]

=== TEST 15: a buyer in line draws no more: a block ratio set while he waits turns away newcomers only
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /a {
        flash_sale zone=sale;
        flash_sale_draw per_key;
        flash_sale_queue rate=1r/s;
        add_header X-Sale $flash_sale_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /api/ { flash_sale_api; }
    location /backend { return 200 "shop\n"; }
--- pipelined_requests eval
["GET /a?user=first", "GET /a?user=waiter",
 "PATCH /api/zones/sale\n{\"block_ratio\": 1}",
 "GET /a?user=waiter", "GET /a?user=newcomer"]
--- more_headers
Content-Type: application/json
--- error_code eval
[200, 503, 200, 503, 503]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: QUEUED", "", "X-Sale: QUEUED", "X-Sale: BLOCKED"]
