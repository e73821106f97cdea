# The gate, step by step as in the Easegress flash-sale tutorial, and the decision order.
# Buyers are told apart by ?user=; the backend is a location of the same server.

use Test::Nginx::Socket 'no_plan';

# Test::Nginx checks --- error_log after every request of a block, against what that request
# alone logged. A block whose log lines come from only some of its requests sends them as
# --- pipelined_requests: one keep-alive connection, every request answered before the first
# check, and check_accum_error_log makes each check read the block's whole log.
check_accum_error_log();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: closed before the start: NOT_STARTED with Retry-After and no-store
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_start 2099-01-01T00:00:00Z;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "You can buy the laptop for one dollar now.\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request
GET /sale?user=alice
--- error_code: 503
--- response_body
NOT_STARTED: the sale has not started yet.
--- response_headers_like
Cache-Control: no-store
Content-Type: text/plain
Retry-After: \d{9,10}
--- no_error_log
[error]


=== TEST 2: open after the start, closed after the end
--- config
    location /open {
        flash_sale zone=sale;
        flash_sale_start 2021-08-08T00:00:00+00:00;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /over {
        flash_sale zone=sale;
        flash_sale_start 2021-08-08T00:00:00Z;
        flash_sale_end 2021-08-08T01:00:00Z;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "You can buy the laptop for one dollar now.\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /open?user=alice", "GET /over?user=alice", "GET /over?user=bob"]
--- error_code eval
[200, 503, 503]
--- response_body eval
["You can buy the laptop for one dollar now.\n", "ENDED: the sale has ended.\n",
 "ENDED: the sale has ended.\n"]
--- response_headers eval
["!Retry-After", "Cache-Control: no-store\n!Retry-After", "!Retry-After"]


=== TEST 3: lucky once, lucky always: a winner passes where the draw now admits nobody
--- config
    add_header X-Sale $flash_sale_status always;
    location /early {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /late {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "You can buy the laptop for one dollar now.\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /early?user=alice", "GET /late?user=alice", "GET /late?user=alice",
 "GET /late?user=bob", "GET /late?user=bob", "GET /late?user=alice"]
--- error_code eval
[200, 200, 200, 503, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: PERMITTED", "X-Sale: PERMITTED",
 "X-Sale: BLOCKED", "X-Sale: BLOCKED", "X-Sale: PERMITTED"]
--- response_body eval
["You can buy the laptop for one dollar now.\n", "You can buy the laptop for one dollar now.\n",
 "You can buy the laptop for one dollar now.\n", "BLOCKED: you were not drawn this time.\n",
 "BLOCKED: you were not drawn this time.\n", "You can buy the laptop for one dollar now.\n"]


=== TEST 4: a cap of 3: the fourth buyer is turned away for good, the three keep passing
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 3;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "You can buy the laptop for one dollar now.\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /sale?user=u1", "GET /sale?user=u2", "GET /sale?user=u3", "GET /sale?user=u4",
 "GET /sale?user=u1", "GET /sale?user=u4", "GET /sale?user=u5", "GET /sale?user=u3"]
--- error_code eval
[200, 200, 200, 503, 200, 503, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: ADMITTED", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT",
 "X-Sale: PERMITTED", "X-Sale: SOLD_OUT", "X-Sale: SOLD_OUT", "X-Sale: PERMITTED"]


=== TEST 5: ratio 0 admits every new buyer, ratio 1 none
--- config
    add_header X-Sale $flash_sale_status always;
    location /all {
        flash_sale zone=sale;
        flash_sale_block_ratio 0;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /none {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
[map({ ("GET /all?user=a$_", "GET /none?user=b$_") } 1 .. 10)]
--- error_code eval
[map({ (200, 503) } 1 .. 10)]
--- response_headers eval
[map({ ("X-Sale: ADMITTED", "X-Sale: BLOCKED") } 1 .. 10)]


=== TEST 6: an empty key is NO_KEY, answered 401
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $http_authorization zone=sale:1m;
--- request eval
["GET /sale", "GET /sale"]
--- more_headers eval
["", "Authorization: Bearer alice"]
--- error_code eval
[401, 200]
--- response_body eval
["NO_KEY: this sale needs a buyer identity.\n", "ok\n"]
--- response_headers eval
["X-Sale: NO_KEY\nCache-Control: no-store", "X-Sale: ADMITTED\n!Cache-Control"]


=== TEST 7: the key is any complex value; a key is compared whole
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone "$arg_shop:$cookie_uid" zone=sale:1m;
--- request eval
["GET /sale?shop=1", "GET /sale?shop=1", "GET /sale?shop=1", "GET /sale?shop=2"]
--- more_headers eval
["Cookie: uid=ab", "Cookie: uid=a", "Cookie: uid=ab", "Cookie: uid=ab"]
--- error_code eval
[200, 200, 200, 503]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: ADMITTED", "X-Sale: PERMITTED", "X-Sale: SOLD_OUT"]


=== TEST 8: settings inherit from server to location; flash_sale off lifts the gate
--- config
    flash_sale zone=sale;
    flash_sale_block_ratio 1;
    flash_sale_reject_status 429;
    add_header X-Sale $flash_sale_status always;
    location /sale {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /catalog {
        flash_sale off;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { flash_sale off; return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /sale?user=a", "GET /catalog?user=a", "GET /catalog"]
--- error_code eval
[429, 200, 200]
--- response_headers eval
["X-Sale: BLOCKED", "!X-Sale", "!X-Sale"]


=== TEST 9: two zones are two sales; two locations on one zone share its permits
--- config
    add_header X-Sale $flash_sale_status always;
    location /laptop/a {
        flash_sale zone=laptop;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /laptop/b {
        flash_sale zone=laptop;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /phone {
        flash_sale zone=phone;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=laptop:1m;
    flash_sale_zone $arg_user zone=phone:64k;
--- request eval
["GET /laptop/a?user=x", "GET /laptop/b?user=x", "GET /laptop/b?user=y", "GET /phone?user=y",
 "GET /phone?user=x"]
--- error_code eval
[200, 200, 503, 200, 503]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: PERMITTED", "X-Sale: SOLD_OUT", "X-Sale: ADMITTED",
 "X-Sale: SOLD_OUT"]


=== TEST 10: a key longer than 1024 bytes is refused, never truncated
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- pipelined_requests eval
["GET /sale?user=" . ("k" x 1025), "GET /sale?user=" . ("k" x 1024)]
--- error_code eval
[400, 200]
--- response_headers eval
["X-Sale: KEY_TOO_LONG", "X-Sale: ADMITTED"]
--- error_log
flash sale key of 1025 bytes is longer than 1024 bytes, refused


=== TEST 11: the reject status is configurable and answers every rejection
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 0;
        flash_sale_reject_status 429;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request
GET /sale?user=a
--- error_code: 429
--- response_body
SOLD_OUT: what you asked for is sold out.


=== TEST 12: a HEAD rejection has the status and headers but no body
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request
HEAD /sale?user=a
--- error_code: 503
--- response_body eval
""
--- response_headers
Cache-Control: no-store
Content-Length: 39


=== TEST 13: in the pre-queue's last minutes: PREQUEUED with Retry-After, once per buyer
--- config
    add_header X-Sale $flash_sale_status always;
    location /soon {
        flash_sale zone=sale;
        flash_sale_start 2099-01-01T00:00:00Z;
        flash_sale_prequeue 36500d;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /later {
        flash_sale zone=sale;
        flash_sale_start 2099-01-01T00:00:00Z;
        flash_sale_prequeue 5m;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /metrics { flash_sale_metrics; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /soon?user=a", "GET /soon?user=a", "GET /soon?user=b", "GET /later?user=c", "GET /metrics"]
--- error_code eval
[503, 503, 503, 503, 200]
--- response_body_like eval
["^PREQUEUED: you are in the draw at the start; come back when the sale starts\.\n\\z",
 "^PREQUEUED", "^PREQUEUED", "^NOT_STARTED", 'flash_sale_prequeued\{zone="sale"\} 2\n']
--- response_headers_like eval
["X-Sale: PREQUEUED\nCache-Control: no-store\nRetry-After: \\d{9,10}", "X-Sale: PREQUEUED",
 "X-Sale: PREQUEUED", "X-Sale: NOT_STARTED\nRetry-After: \\d{9,10}", ""]
--- no_error_log
[error]

