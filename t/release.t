# flash_sale_release_header: a backend that answers a gated request with the header (payment
# failed, order cancelled) frees the buyer's permit; the client never sees the header.

use Test::Nginx::Socket 'no_plan';

# Test::Nginx checks --- error_log after every request of a block, against what that request
# alone logged. A block whose log lines come from only some of its requests sends them as
# --- pipelined_requests: one keep-alive connection, every request answered before the first
# check, and check_accum_error_log makes each check read the block's whole log.
check_accum_error_log();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: the backend releases a permit, its slot goes back to the draw
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        flash_sale_release_header X-Flash-Sale-Release;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend/$arg_pay;
    }
    location /backend/ok { return 200 "paid\n"; }
    location /backend/failed {
        add_header X-Flash-Sale-Release "payment failed" always;
        return 402 "payment failed\n";
    }
    location /backend/broken { return 500 "oops\n"; }
    location = /metrics { flash_sale_metrics; }
--- pipelined_requests eval
["GET /sale?user=a&pay=broken", "GET /sale?user=b&pay=ok", "GET /sale?user=a&pay=failed",
 "GET /sale?user=b&pay=ok", "GET /sale?user=a&pay=ok", "GET /metrics"]
--- error_code eval
[500, 503, 402, 200, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "X-Sale: PERMITTED\n!X-Flash-Sale-Release",
 "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", ""]
--- response_body_like eval
["", "", "payment failed", "", "", qr/^\Qflash_sale_permits_revoked_total{zone="sale"} 1\E$/m]
--- error_log
flash sale: the backend released permit 1 in zone "sale"


=== TEST 2: the header is only heeded where configured, and only from the backend
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend {
        add_header X-Flash-Sale-Release "payment failed";
        return 200 "ok\n";
    }
--- request eval
["GET /sale?user=a", "GET /sale?user=b"]
--- error_code eval
[200, 503]
--- response_headers eval
["X-Sale: ADMITTED\nX-Flash-Sale-Release: payment failed", "X-Sale: SOLD_OUT"]
