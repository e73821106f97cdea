# flash_sale_permit_ttl: an expired permit stops counting against the cap, its slot goes back
# to the draw, and its holder has to win again.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a permit of 1s expires; the next buyer takes its slot
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    # One request a second with a queue: the second /wait is held back a second.
    limit_req_zone $server_name zone=clock:64k rate=1r/s;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        flash_sale_permit_ttl 1s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /wait {
        limit_req zone=clock burst=5;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location = /metrics { flash_sale_metrics; }
--- request eval
["GET /sale?user=a", "GET /sale?user=a", "GET /sale?user=b", "GET /wait", "GET /wait",
 "GET /wait", "GET /sale?user=b", "GET /sale?user=a", "GET /metrics"]
--- error_code eval
[200, 200, 503, 200, 200, 200, 200, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: PERMITTED", "X-Sale: SOLD_OUT", "", "", "",
 "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", ""]
--- response_body_like eval
["", "", "", "", "", "", "", "",
 qr/^\Qflash_sale_permits_expired_total{zone="sale"} 1\E$(?s:.*)^\Qflash_sale_permits{zone="sale"} 1\E$|^\Qflash_sale_permits{zone="sale"} 1\E$(?s:.*)^\Qflash_sale_permits_expired_total{zone="sale"} 1\E$/m]
--- timeout: 5


=== TEST 2: a bad time-to-live is refused
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_permit_ttl 0s;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "0s" in "flash_sale_permit_ttl" directive, expected a time of more than zero, such as 30s, 10m, 1h30m or 500ms in \S+nginx\.conf:\d+/
