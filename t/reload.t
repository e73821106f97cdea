# Permits, their numbers and the permit count survive `nginx -s reload` (SIGHUP) while the zone keeps its name,
# size and key. Each block reloads the running nginx with its own configuration.

BEGIN { $ENV{TEST_NGINX_USE_HUP} = 1 }

use Test::Nginx::Socket 'no_plan';

master_on();
workers(2);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: before the reload: alice wins a permit
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    add_header X-Seq $flash_sale_seq always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request
GET /sale?user=alice
--- response_headers
X-Sale: ADMITTED
X-Seq: 1


=== TEST 2: after a reload that closes the draw, alice still passes and bob cannot win
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    add_header X-Seq $flash_sale_seq always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request eval
["GET /sale?user=alice", "GET /sale?user=bob"]
--- error_code eval
[200, 503]
--- response_headers eval
["X-Sale: PERMITTED", "X-Sale: BLOCKED"]


=== TEST 3: the count survived too: one permit left under the cap of 2
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    add_header X-Seq $flash_sale_seq always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request eval
["GET /sale?user=carol", "GET /sale?user=dave", "GET /sale?user=alice"]
--- error_code eval
[200, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED\nX-Seq: 2", "X-Sale: SOLD_OUT\n!X-Seq", "X-Sale: PERMITTED\nX-Seq: 1"]


=== TEST 4: an override from the API raises the cap of the running sale
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    add_header X-Seq $flash_sale_seq always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- more_headers
Content-Type: application/json
--- request eval
["PATCH /api/zones/sale\n{\"max_permits\": 3}", "GET /sale?user=dave"]
--- response_headers eval
["", "X-Sale: ADMITTED\nX-Seq: 3"]


=== TEST 5: the override, the counters and the permits survive the next reload
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
    location = /metrics { flash_sale_metrics; }
--- request eval
["GET /sale?user=erin", "GET /sale?user=dave", "GET /api/zones/sale", "GET /metrics"]
--- error_code eval
[503, 200, 200, 200]
--- response_headers eval
["X-Sale: SOLD_OUT", "X-Sale: PERMITTED", "", ""]
--- response_body_like eval
["", "", qr/"max_permits":3,.*"overrides":\{"block_ratio":null,"end":null,"max_permits":3,"queue_rate":null,"start":null\},"permits":3,/,
 qr/^\Qflash_sale_requests_total{zone="sale",status="ADMITTED"} 3\E$(?s:.*)^\Qflash_sale_permits_granted_total{zone="sale"} 3\E$/m]


=== TEST 6: a reload that changes the zone's key is refused; the running sale goes on
--- http_config
    flash_sale_zone $cookie_uid zone=sale:1m;
--- config
    add_header X-Sale $flash_sale_status always;
    add_header X-Seq $flash_sale_seq always;
    location /sale {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- reload_fails
--- request
GET /sale?user=alice
--- response_headers
X-Sale: PERMITTED
--- error_log
flash_sale_zone "sale" uses the "$cookie_uid" key while previously it used the "$arg_user" key


=== TEST 7: a resized zone is a new zone: neither the permits nor the overrides carry over
--- http_config
    flash_sale_zone $arg_user zone=sale:2m;
--- config
    add_header X-Sale $flash_sale_status always;
    add_header X-Seq $flash_sale_seq always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location /api/ { flash_sale_api; }
--- request eval
["GET /sale?user=alice", "GET /api/zones/sale"]
--- error_code eval
[503, 200]
--- response_headers eval
["X-Sale: BLOCKED", ""]
--- response_body_like eval
["", qr/"overrides":\{"block_ratio":null,"end":null,"max_permits":null,"queue_rate":null,"start":null\},"permits":0,/]
