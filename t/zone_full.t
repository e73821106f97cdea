# A full zone never evicts a permit: new buyers get SOLD_OUT, winners keep passing, and the
# error log says so once.

use Test::Nginx::Socket 'no_plan';

# Test::Nginx checks --- error_log after every request of a block, against what that request
# alone logged. A block whose log lines come from only some of its requests sends them as
# --- pipelined_requests: one keep-alive connection, every request answered before the first
# check, and check_accum_error_log makes each check read the block's whole log.
check_accum_error_log();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: the smallest zone (32k) holds 8 permits of 1 KB keys; then SOLD_OUT, logged once
--- http_config
    flash_sale_zone $arg_user zone=tiny:32k;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=tiny;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- pipelined_requests eval
my $key = "k" x 1000;
# A 1 KB key takes a 2 KB slab chunk: 8 fit beside the table in 32 KB (measured).
[(map { "GET /sale?user=$_$key" } 1 .. 12), "GET /sale?user=1$key", "GET /sale?user=8$key"]
--- error_code eval
[(200) x 8, (503) x 4, 200, 200]
--- response_headers eval
[("X-Sale: ADMITTED") x 8, ("X-Sale: SOLD_OUT") x 4, "X-Sale: PERMITTED", "X-Sale: PERMITTED"]
--- error_log
flash_sale_zone "tiny" is full with 8 permits; new buyers get SOLD_OUT
--- grep_error_log chop
is full with
--- grep_error_log_out
is full with
--- no_error_log eval
qr/ngx_slab_alloc\(\) failed/
