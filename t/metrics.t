# flash_sale_metrics: Prometheus text with the zones' counters, exact and shared by workers.

use Test::Nginx::Socket 'no_plan';

master_on();
workers(2);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: requests by outcome, permits, the cap and memory, per zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_zone $arg_user zone=quiet:64k;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
    location = /metrics {
        flash_sale_metrics;
    }
--- request eval
["GET /sale?user=a", "GET /sale?user=b", "GET /sale?user=c", "GET /sale?user=a", "GET /sale",
 "GET /metrics"]
--- error_code eval
[200, 200, 503, 200, 401, 200]
--- response_headers eval
["", "", "", "", "", "Content-Type: text/plain; version=0.0.4"]
--- response_body_like eval
["", "", "", "", "",
 qr/\Q# TYPE flash_sale_requests_total counter\E
(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="NO_KEY"} 1\E$
(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="PERMITTED"} 1\E$
(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="SOLD_OUT"} 1\E$
(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="BLOCKED"} 0\E$
(?s:.*)^\Qflash_sale_requests_total{zone="sale",status="ADMITTED"} 2\E$
(?s:.*)^\Qflash_sale_requests_total{zone="quiet",status="ADMITTED"} 0\E$
(?s:.*)^\Qflash_sale_permits{zone="sale"} 2\E$
(?s:.*)^\Qflash_sale_permits{zone="quiet"} 0\E$
(?s:.*)^\Qflash_sale_permits_granted_total{zone="sale"} 2\E$
(?s:.*)^\Qflash_sale_max_permits{zone="sale"} 2\E$
(?s:.*)^\Qflash_sale_zone_bytes{zone="sale",kind="used"}\E \d+$
(?s:.*)^\Qflash_sale_zone_bytes{zone="sale",kind="total"} 1048576\E$
/m]


=== TEST 2: only GET and HEAD
--- config
    location = /metrics {
        flash_sale_metrics;
    }
--- request
POST /metrics
--- error_code: 405


=== TEST 3: the endpoints exist only where they are configured
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- request eval
["GET /sale?user=a", "GET /metrics", "GET /api/zones", "GET /sale/metrics?user=a"]
--- error_code eval
[200, 404, 404, 200]
--- response_body_like eval
["^ok\n\$", "404 Not Found", "404 Not Found", "^ok\n\$"]
