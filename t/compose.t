# How the gate composes with nginx: access checks run first and cost no permit; error pages
# see the outcome; internal redirects are never decided twice.

use Test::Nginx::Socket 'no_plan';

# Test::Nginx checks --- error_log after every request of a block, against what that request
# alone logged. A block whose log lines come from only some of its requests sends them as
# --- pipelined_requests: one keep-alive connection, every request answered before the first
# check, and check_accum_error_log makes each check read the block's whole log.
check_accum_error_log();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: a denied client never draws and never uses up a permit
--- config
    add_header X-Sale $flash_sale_status always;
    location /banned {
        deny 127.0.0.1;
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /banned?user=mallory", "GET /banned?user=mallory", "GET /sale?user=alice",
 "GET /sale?user=mallory"]
--- error_code eval
[403, 403, 200, 503]
--- response_headers eval
["!X-Sale", "!X-Sale", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT"]


=== TEST 2: a rate-limited client never draws and never uses up a permit
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        limit_req zone=perip;
        limit_req_status 429;
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /unlimited {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    limit_req_zone $binary_remote_addr zone=perip:1m rate=1r/m;
    flash_sale_zone $arg_user zone=sale:1m;
--- pipelined_requests eval
["GET /sale?user=a", "GET /sale?user=b", "GET /sale?user=c", "GET /unlimited?user=d",
 "GET /unlimited?user=b"]
--- error_code eval
[200, 429, 429, 200, 503]
--- response_headers eval
["X-Sale: ADMITTED", "!X-Sale", "!X-Sale", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT"]
--- error_log
limiting requests


=== TEST 3: an error_page for the reject status replaces the body and sees $flash_sale_status
--- config
    flash_sale zone=sale;
    error_page 503 /busy.html;
    location /sale {
        flash_sale_block_ratio 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /check {
        flash_sale_block_ratio 1;
        add_header X-Sale $flash_sale_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    # The error page is gated too (it inherits flash_sale) but admits everyone: deciding the
    # redirected request again would hand out a permit.
    location = /busy.html {
        flash_sale_block_ratio 0;
        root html;
        add_header X-Sale $flash_sale_status always;
    }
    location /backend { flash_sale off; return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- user_files
>>> busy.html
Too many buyers right now. Status: see X-Sale.
--- request eval
["GET /sale?user=a", "GET /check?user=a"]
--- error_code eval
[503, 503]
--- response_body eval
["Too many buyers right now. Status: see X-Sale.\n",
 "Too many buyers right now. Status: see X-Sale.\n"]
--- response_headers eval
["X-Sale: BLOCKED\nCache-Control: no-store", "X-Sale: BLOCKED"]


=== TEST 4: an error_page for 401 serves NO_KEY, and $flash_sale_status reaches the access log
--- config
    location /sale {
        flash_sale zone=sale;
        error_page 401 /who.txt;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location = /who.txt {
        root html;
        add_header X-Sale $flash_sale_status always;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $cookie_uid zone=sale:1m;
    log_format sale "sale=$flash_sale_status uri=$request_uri";
    access_log logs/error.log sale;
--- user_files
>>> who.txt
Please sign in first.
--- pipelined_requests eval
["GET /sale", "GET /sale"]
--- more_headers eval
["", "Cookie: uid=7"]
--- error_code eval
[401, 200]
--- response_body eval
["Please sign in first.\n", "ok\n"]
--- response_headers eval
["X-Sale: NO_KEY", ""]
--- error_log
sale=NO_KEY uri=/sale
sale=ADMITTED uri=/sale
sale=- uri=/backend


=== TEST 5: try_files to another gated location takes no second permit
--- config
    add_header X-Sale $flash_sale_status always;
    location /a {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        try_files /nonexistent /b$is_args$args;
    }
    location /b {
        flash_sale zone=sale;
        flash_sale_max_permits 2;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /a?user=u1", "GET /a?user=u2", "GET /a?user=u3", "GET /a?user=u1"]
--- error_code eval
[200, 200, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "X-Sale: PERMITTED"]


=== TEST 6: an error_page redirect after admission keeps the decision
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/missing;
        proxy_intercept_errors on;
        error_page 404 = /fallback;
    }
    location /fallback {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /missing { return 404; }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /sale?user=u1", "GET /fallback?user=u2", "GET /sale?user=u1"]
--- error_code eval
[200, 503, 200]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: SOLD_OUT", "X-Sale: PERMITTED"]


=== TEST 7: subrequests are not decided again
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        add_header X-Sale $flash_sale_status always;
        auth_request /auth;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location = /auth {
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /sale?user=u1", "GET /sale?user=u2"]
--- error_code eval
[200, 503]
--- response_headers eval
["X-Sale: ADMITTED", "X-Sale: SOLD_OUT"]


=== TEST 8: auth_request refusal comes before the gate
--- config
    add_header X-Sale $flash_sale_status always;
    location /sale {
        auth_request /auth;
        flash_sale zone=sale;
        flash_sale_max_permits 1;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location = /auth {
        # A subrequest has no arguments of its own, but it has the client's headers.
        if ($http_x_bot) { return 403; }
        return 204;
    }
    location /backend { return 200 "ok\n"; }
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- request eval
["GET /sale?user=bot", "GET /sale?user=human", "GET /sale?user=bot"]
--- more_headers eval
["X-Bot: yes", "", "X-Bot: yes"]
--- error_code eval
[403, 200, 403]
--- response_headers eval
["!X-Sale", "X-Sale: ADMITTED", "!X-Sale"]
