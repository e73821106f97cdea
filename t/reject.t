# What a rejected client receives for the statuses nginx treats specially: 444, 408 and 499
# close the connection with nothing sent, and are logged with that status, exactly as
# `limit_req_status` does with them (nginx's ngx_http_finalize_request); any other status is
# answered, with a body.

use Test::Nginx::Socket 'no_plan';

our $HttpConfig = <<'_EOC_';
    flash_sale_zone $arg_user zone=sale:1m;
    limit_req_zone $arg_user zone=rate:1m rate=1r/m;
_EOC_

# A sale that turns everybody away with `status`.
sub refusing {
    my ($status) = @_;
    return <<"_EOC_";
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        flash_sale_reject_status $status;
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\\n"; }
_EOC_
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: flash_sale_reject_status 444 closes the connection with nothing sent
--- http_config eval: $::HttpConfig
--- config eval: ::refusing(444)
--- request
GET /sale?user=bot
--- error_code:
--- response_body:
--- access_log eval
qr{"GET /sale\?user=bot HTTP/1\.1" 444 0 }
--- no_error_log
[alert]
[crit]



=== TEST 2: limit_req_status 444 does the same: the same empty reply from nginx's own limiter
--- http_config eval: $::HttpConfig
--- config
    location /limited {
        limit_req zone=rate nodelay;
        limit_req_status 444;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request eval
["GET /limited?user=bot", "GET /limited?user=bot"]
--- error_code eval
[200, ""]
--- response_body eval
["ok\n", ""]



=== TEST 3: 408 closes the connection too, logged as 408
--- http_config eval: $::HttpConfig
--- config eval: ::refusing(408)
--- request
GET /sale?user=bot
--- error_code:
--- response_body:
--- access_log eval
qr{"GET /sale\?user=bot HTTP/1\.1" 408 0 }



=== TEST 4: 499 closes the connection too, logged as 499
--- http_config eval: $::HttpConfig
--- config eval: ::refusing(499)
--- request
GET /sale?user=bot
--- error_code:
--- response_body:
--- access_log eval
qr{"GET /sale\?user=bot HTTP/1\.1" 499 0 }



=== TEST 5: 444 closes before the start and when sold out too; a winner still passes
--- http_config eval: $::HttpConfig
--- config
    location /soon {
        flash_sale zone=sale;
        flash_sale_start 2999-01-01T00:00:00Z;
        flash_sale_reject_status 444;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        flash_sale_reject_status 444;
        add_header X-Flash-Sale $flash_sale_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request eval
["GET /soon?user=amy", "GET /sale?user=amy", "GET /sale?user=bob", "GET /sale?user=amy"]
--- error_code eval
["", 200, "", 200]
--- response_body eval
["", "ok\n", "", "ok\n"]
--- response_headers eval
["", "X-Flash-Sale: ADMITTED", "", "X-Flash-Sale: PERMITTED"]



=== TEST 6: with a dry run, 444 closes nothing: the request goes on
--- http_config eval: $::HttpConfig
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        flash_sale_reject_status 444;
        flash_sale_dry_run on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request
GET /sale?user=bot
--- error_code: 200
--- response_body
ok



=== TEST 7: any other status is answered, with the one-line body
--- http_config eval: $::HttpConfig
--- config eval: ::refusing(429)
--- request
GET /sale?user=bot
--- error_code: 429
--- response_body
BLOCKED: you were not drawn this time.
--- access_log eval
qr{"GET /sale\?user=bot HTTP/1\.1" 429 \d+ }
