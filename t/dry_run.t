# flash_sale_dry_run: decisions are made, counted and logged, but nothing is rejected, and a
# request that would have been rejected stores no permit. flash_sale_log_level sets the level
# of the rejection lines.

use Test::Nginx::Socket 'no_plan';

# Test::Nginx checks --- error_log after every request of a block, against what that request
# alone logged. A block whose log lines come from only some of its requests sends them as
# --- pipelined_requests: one keep-alive connection, every request answered before the first
# check, and check_accum_error_log makes each check read the block's whole log.
check_accum_error_log();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: would-be rejections pass with a _DRY_RUN status and take no permit
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /trial {
        flash_sale zone=sale;
        flash_sale_dry_run on;
        flash_sale_block_ratio 1;
        flash_sale_log_level warn;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /open {
        flash_sale zone=sale;
        flash_sale_dry_run on;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /early {
        flash_sale zone=sale;
        flash_sale_dry_run on;
        flash_sale_start 2099-01-01T00:00:00Z;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /real {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location = /metrics { flash_sale_metrics; }
--- pipelined_requests eval
["GET /trial?user=a", "GET /real?user=a", "GET /open?user=b", "GET /open?user=c",
 "GET /real?user=b", "GET /early?user=b", "GET /trial", "GET /metrics"]
--- error_code eval
[200, 503, 200, 200, 200, 200, 200, 200]
--- response_headers eval
["X-Sale: BLOCKED_DRY_RUN", "X-Sale: BLOCKED", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT_DRY_RUN",
 "X-Sale: PERMITTED", "X-Sale: NOT_STARTED_DRY_RUN", "X-Sale: NO_KEY_DRY_RUN", ""]
--- response_body_like eval
["", "", "", "", "", "", "",
 qr/\A(?!(?s:.*)status="ADMITTED"(?s:.*)status="ADMITTED")(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="BLOCKED_DRY_RUN"} 1\E$(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="ADMITTED"} 1\E$/m]
--- error_log eval
[qr/\[warn\].*flash sale: BLOCKED in zone "sale", dry run/,
 qr/\[info\].*flash sale: BLOCKED in zone "sale"(?!, dry run)/,
 qr/\[info\].*flash sale: SOLD_OUT in zone "sale", dry run/]


=== TEST 2: rejections are logged at the configured level, and not below error_log's
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        flash_sale_log_level error;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /quiet {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- pipelined_requests eval
["GET /sale?user=a", "GET /quiet?user=b"]
--- error_code eval
[503, 503]
--- error_log eval
qr/\[error\].*flash sale: BLOCKED in zone "sale", client: 127\.0\.0\.1, server: localhost, request: "GET \/sale\?user=a/


=== TEST 3: bad values are refused
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_log_level debug;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "debug" in "flash_sale_log_level" directive, expected info, notice, warn or error/
