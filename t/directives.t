# Every bad directive value stops nginx at startup (and `nginx -t`) with a message that names
# the directive or parameter, the value, and file:line.

use Test::Nginx::Socket 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a malformed start date
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_start 2021-13-01T00:00:00Z;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "2021-13-01T00:00:00Z" in "flash_sale_start" directive, expected an RFC 3339 time such as 2021-08-08T00:00:00Z in \S+nginx\.conf:\d+/

=== TEST 2: a start date without a zone offset
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_start 2021-08-08T00:00:00;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "2021-08-08T00:00:00" in "flash_sale_start" directive/

=== TEST 3: a malformed end date
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_end tomorrow;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "tomorrow" in "flash_sale_end" directive, expected an RFC 3339 time/

=== TEST 4: an end before the start
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_start 2021-08-08T00:00:00Z;
        flash_sale_end 2021-08-07T23:59:59Z;
        return 200;
    }
--- must_die
--- error_log eval
qr/"flash_sale_end 2021-08-07T23:59:59Z" leaves an empty sale window: "flash_sale_end" must be after "flash_sale_start" in \S+nginx\.conf:\d+/

=== TEST 5: an end equal to the start, given first
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_end 2021-08-08T08:00:00+08:00;
        flash_sale_start 2021-08-08T00:00:00Z;
        return 200;
    }
--- must_die
--- error_log eval
qr/"flash_sale_start 2021-08-08T00:00:00Z" leaves an empty sale window/

=== TEST 6: an inherited start after the location's end
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_start 2021-08-09T00:00:00Z;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_end 2021-08-08T00:00:00Z;
        return 200;
    }
--- must_die
--- error_log eval
qr/the inherited settings leave an empty sale window: "flash_sale_end" must be after "flash_sale_start"/

=== TEST 7: a ratio above 1
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 1.5;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "1.5" in "flash_sale_block_ratio" directive, expected a number from 0 to 1 in \S+nginx\.conf:\d+/

=== TEST 8: a negative ratio
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio -0.1;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "-0.1" in "flash_sale_block_ratio" directive/

=== TEST 9: a ratio that is not a number
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio forty%;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "forty%" in "flash_sale_block_ratio" directive/

=== TEST 10: a negative cap
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits -1;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "-1" in "flash_sale_max_permits" directive, expected a whole number of permits, 0 or more, or a value with variables in \S+nginx\.conf:\d+/

=== TEST 11: a cap that is not a number
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_max_permits three;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "three" in "flash_sale_max_permits" directive/

=== TEST 12: a reject status above 599
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_reject_status 600;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "600" in "flash_sale_reject_status" directive, expected a status from 400 to 599 in \S+nginx\.conf:\d+/

=== TEST 13: a success status as the reject status
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_reject_status 200;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "200" in "flash_sale_reject_status" directive/

=== TEST 14: an unknown zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=nosuch;
        return 200;
    }
--- must_die
--- error_log eval
qr/unknown flash_sale_zone "nosuch" in \S+nginx\.conf:\d+/

=== TEST 15: a zone used before it is declared
--- http_config
    
--- config
    location /sale {
        flash_sale zone=later;
        return 200;
    }
--- must_die
--- error_log eval
qr/unknown flash_sale_zone "later"/

=== TEST 16: a gate without a zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid parameter "sale" in \S+nginx\.conf:\d+/

=== TEST 17: a zone declared twice
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_zone $cookie_uid zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/flash_sale_zone "sale" is already declared in \S+nginx\.conf:\d+/

=== TEST 18: a zone name taken by another module
--- http_config
    limit_req_zone $arg_user zone=sale:1m rate=1r/s;
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/the shared memory zone "sale" is already declared for a different use/

=== TEST 19: a zone without a size
--- http_config
    flash_sale_zone $arg_user zone=sale;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid zone size "zone=sale" in \S+nginx\.conf:\d+/

=== TEST 20: a zone with a malformed size
--- http_config
    flash_sale_zone $arg_user zone=sale:lots;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid zone size "zone=sale:lots"/

=== TEST 21: a zone that is too small
--- http_config
    flash_sale_zone $arg_user zone=sale:16k;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/zone "zone=sale:16k" is too small in \S+nginx\.conf:\d+/

=== TEST 22: an unknown zone parameter
--- http_config
    flash_sale_zone $arg_user zone=sale:1m rate=10r/s;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid parameter "rate=10r\/s" in \S+nginx\.conf:\d+/

=== TEST 23: a zone without the zone parameter
--- http_config
    flash_sale_zone $arg_user;
--- config
    
--- must_die
--- error_log eval
qr/invalid number of arguments in "flash_sale_zone" directive in \S+nginx\.conf:\d+/

=== TEST 24: flash_sale_zone inside a server
--- http_config
    
--- config
    flash_sale_zone $arg_user zone=sale:1m;
--- must_die
--- error_log eval
qr/"flash_sale_zone" directive is not allowed here in \S+nginx\.conf:\d+/

=== TEST 25: a setting given twice in one block
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_block_ratio 0.1;
        flash_sale_block_ratio 0.2;
        return 200;
    }
--- must_die
--- error_log eval
qr/"flash_sale_block_ratio" directive is duplicate in \S+nginx\.conf:\d+/

=== TEST 26: a draw mode that does not exist
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_draw per_ip;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "per_ip" in "flash_sale_draw" directive, expected per_request, or per_key with an optional interval of more than zero such as 30s in \S+nginx\.conf:\d+/

=== TEST 27: a per-key draw with a bad interval
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_draw per_key soon;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "soon" in "flash_sale_draw" directive, expected per_request, or per_key with an optional interval of more than zero such as 30s in \S+nginx\.conf:\d+/

=== TEST 28: flash_sale given twice in one block
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale off;
        return 200;
    }
--- must_die
--- error_log eval
qr/"flash_sale" directive is duplicate/

=== TEST 29: a pre-queue needs a time
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_prequeue 5 minutes;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid number of arguments in "flash_sale_prequeue" directive in \S+nginx\.conf:\d+/

=== TEST 30: a pre-queue of no time at all
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_prequeue 0s;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid value "0s" in "flash_sale_prequeue" directive, expected a time of more than zero, such as 30s, 10m, 1h30m or 500ms in \S+nginx\.conf:\d+/

=== TEST 31: a token secret that cannot be read
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_token_secret /nonexistent/token.key;
--- config
    location /sale {
        flash_sale zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr{cannot read "/nonexistent/token.key" in "flash_sale_token_secret" directive: No such file or directory \(os error 2\) in \S+nginx\.conf:\d+}

=== TEST 32: a token secret too short for HS256
--- user_files
>>> short.key
too short a key
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_token_secret ../html/short.key;
        return 200;
    }
--- must_die
--- error_log eval
qr{the secret in "\S+/html/short\.key" is 15 bytes long, "flash_sale_token_secret" needs at least 32 in \S+nginx\.conf:\d+}

=== TEST 33: verifying tokens needs their secret
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /checkout {
        flash_sale_verify zone=sale;
        return 200;
    }
--- must_die
--- error_log eval
qr/"flash_sale_verify" needs a "flash_sale_token_secret" to check tokens with/

=== TEST 34: verifying tokens of an unknown zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /checkout {
        flash_sale_verify zone=other;
        return 200;
    }
--- must_die
--- error_log eval
qr/unknown flash_sale_zone "other" in \S+nginx\.conf:\d+/

=== TEST 35: a bad token parameter
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /checkout {
        flash_sale_verify zone=sale cookie=$cookie_t;
        return 200;
    }
--- must_die
--- error_log eval
qr/invalid parameter "cookie=\$cookie_t" in \S+nginx\.conf:\d+/

=== TEST 36: the documented grammar, in full, is accepted
--- user_files
>>> token.key
0123456789abcdef0123456789abcdef
>>> redis.pass
a password
--- http_config
    flash_sale_zone $http_authorization zone=laptop:10m;
    flash_sale_zone "$arg_shop:$cookie_uid" zone=phone:64k;
    flash_sale_redis zone=phone server=127.0.0.1:6390 password=../html/redis.pass timeout=100ms
                     prefix=shop: on_error=open cache=2s;
    flash_sale_start 2021-08-08T00:00:00+00:00;
--- config
    location /flashsale {
        flash_sale zone=laptop;
        flash_sale_end 2099-08-08T01:00:00Z;
        flash_sale_block_ratio 0.4;
        flash_sale_max_permits 3;
        flash_sale_reject_status 503;
        flash_sale_draw per_key 30s;
        flash_sale_prequeue 5m;
        return 200 "open\n";
    }
    location /phone {
        flash_sale zone=phone;
        flash_sale_start 2021-08-08T08:00:00.250+08:00;
        return 200 "open\n";
    }
    location /off {
        flash_sale off;
        flash_sale_verify off;
        return 200 "open\n";
    }
    location /checkout {
        flash_sale_token_secret ../html/token.key;
        flash_sale_verify zone=laptop token=$cookie_permit;
        return 200 "open\n";
    }
--- request
GET /off
--- response_body
open
--- no_error_log
[emerg]
[warn]

=== TEST 37: Redis without a server
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale timeout=100ms;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/a "server=HOST:PORT" parameter is required in "flash_sale_redis" directive in \S+nginx\.conf:\d+/

=== TEST 38: Redis with a bad parameter
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=127.0.0.1:6379 timeout=soon;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/invalid parameter "timeout=soon" in "flash_sale_redis" directive in \S+nginx\.conf:\d+/

=== TEST 39: Redis with a server without a port
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=localhost;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/invalid parameter "server=localhost" in "flash_sale_redis" directive in \S+nginx\.conf:\d+/

=== TEST 40: Redis for an unknown zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=other server=127.0.0.1:6379;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/unknown flash_sale_zone "other" in \S+nginx\.conf:\d+/

=== TEST 41: two Redis for one zone
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=127.0.0.1:6379;
    flash_sale_redis zone=sale server=127.0.0.1:6380;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/flash_sale_zone "sale" already has a "flash_sale_redis" in \S+nginx\.conf:\d+/

=== TEST 42: a zone in Redis keeps no state file
--- http_config
    # The file is opened (so created) as the directive is read, before the refusal: under
    # logs/, which the harness empties, not loose in t/servroot, where it stops the whole run.
    flash_sale_zone $arg_user zone=sale:1m state=logs/sale.state;
    flash_sale_redis zone=sale server=127.0.0.1:6379;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/flash_sale_zone "sale" has a state file; a zone kept in Redis needs none in \S+nginx\.conf:\d+/

=== TEST 43: a pre-queue and a line for a zone in Redis
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=127.0.0.1:6379;
--- config
    location /sale {
        flash_sale zone=sale;
        flash_sale_start 2099-01-01T00:00:00Z;
        flash_sale_prequeue 5m;
        flash_sale_queue rate=10r/s idle=30s;
        proxy_pass http://127.0.0.1:1/;
    }
    location /open { return 200 "open\n"; }
--- request
GET /open
--- response_body
open
--- no_error_log
[emerg]

=== TEST 44: a Redis password that cannot be read
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=127.0.0.1:6379 password=/nonexistent/redis.pass;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr{cannot read "/nonexistent/redis\.pass" in "flash_sale_redis" directive: No such file or directory \(os error 2\) in \S+nginx\.conf:\d+}

=== TEST 45: Redis is set in the http block only
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /sale {
        flash_sale_redis zone=sale server=127.0.0.1:6379;
        return 200;
    }
--- must_die
--- error_log eval
qr/"flash_sale_redis" directive is not allowed here in \S+nginx\.conf:\d+/

=== TEST 46: Redis on a thread pool nobody declared
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=127.0.0.1:6379 threads=redis;
--- config
    location /sale { flash_sale zone=sale; return 200; }
--- must_die
--- error_log eval
qr/unknown thread pool "redis" in \S+nginx\.conf:\d+/

=== TEST 47: Redis on a thread pool of its own
--- main_config
    thread_pool redis threads=4;
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
    flash_sale_redis zone=sale server=127.0.0.1:6379 threads=redis;
--- config
    location /open { return 200 "open\n"; }
--- request
GET /open
--- response_body
open
--- no_error_log
[emerg]



=== TEST 48: two zones cannot share a state file
--- http_config
    flash_sale_zone $arg_user zone=a:1m state=logs/shared.state;
    flash_sale_zone $cookie_uid zone=b:1m state=logs/shared.state;
--- config
    location /sale { flash_sale zone=a; return 200; }
--- must_die
--- error_log eval
qr/"state=logs\/shared\.state" is the state file of flash_sale_zone "a" already, or its lock file in \S+nginx\.conf:\d+/



=== TEST 49: nor can one zone's state file be another's lock file
--- http_config
    flash_sale_zone $arg_user zone=a:1m state=logs/shared.state;
    flash_sale_zone $cookie_uid zone=b:1m state=logs/shared.state.lock;
--- config
    location /sale { flash_sale zone=a; return 200; }
--- must_die
--- error_log eval
qr/"state=logs\/shared\.state\.lock" is the state file of flash_sale_zone "a" already, or its lock file in \S+nginx\.conf:\d+/



=== TEST 50: nor can one zone's lock file be another's state file
--- http_config
    flash_sale_zone $arg_user zone=a:1m state=logs/shared.state.lock;
    flash_sale_zone $cookie_uid zone=b:1m state=logs/shared.state;
--- config
    location /sale { flash_sale zone=a; return 200; }
--- must_die
--- error_log eval
qr/"state=logs\/shared\.state" is the state file of flash_sale_zone "a" already, or its lock file in \S+nginx\.conf:\d+/




=== TEST 51: a link at the state file's path is not followed
--- post_setup_server_root
symlink '/etc/hostname', "$Test::Nginx::Util::ServRoot/logs/link.state" or die $!;
--- http_config
    flash_sale_zone $arg_user zone=a:1m state=logs/link.state;
--- config
    location /sale { flash_sale zone=a; return 200; }
--- must_die
--- error_log eval
qr/cannot open "state=logs\/link\.state": Too many levels of symbolic links .*in \S+nginx\.conf:\d+/



=== TEST 52: nor one at its lock file's, which the error names
--- post_setup_server_root
symlink '/etc/hostname', "$Test::Nginx::Util::ServRoot/logs/sale.state.lock" or die $!;
--- http_config
    flash_sale_zone $arg_user zone=a:1m state=logs/sale.state;
--- config
    location /sale { flash_sale zone=a; return 200; }
--- must_die
--- error_log eval
qr/cannot open "state=logs\/sale\.state": \S+\/logs\/sale\.state\.lock: Too many levels of symbolic links .*in \S+nginx\.conf:\d+/



=== TEST 53: items: every directive of a drop of many items passes
--- user_files
>>> token.key
0123456789abcdef0123456789abcdef
--- http_config
    map $arg_sku $stock { red-42 10; default 0; }
    flash_sale_zone $arg_user zone=drop:1m;
--- config
    flash_sale_token_secret ../html/token.key;
    location /drop {
        flash_sale zone=drop;
        flash_sale_item $arg_sku;
        flash_sale_max_permits $stock;
        flash_sale_max_per_buyer 1;
        return 200 "drop\n";
    }
    location /checkout {
        flash_sale_verify zone=drop token=$cookie_permit item=$arg_sku;
        return 200 "checkout\n";
    }
--- request
GET /drop
--- response_body
drop



=== TEST 54: a limit of no items, or not a number
--- http_config
    flash_sale_zone $arg_user zone=drop:1m;
--- config
    location /drop { flash_sale zone=drop; flash_sale_max_per_buyer 0; return 200; }
--- must_die
--- error_log eval
qr/invalid value "0" in "flash_sale_max_per_buyer" directive, expected a whole number of items, 1 or more in \S+nginx\.conf:\d+/



=== TEST 55: an empty item
--- http_config
    flash_sale_zone $arg_user zone=drop:1m;
--- config
    location /drop { flash_sale zone=drop; flash_sale_item ""; return 200; }
--- must_die
--- error_log eval
qr/invalid value "" in "flash_sale_item" directive, expected an item, such as \$arg_sku in \S+nginx\.conf:\d+/



=== TEST 56: an item given twice
--- http_config
    flash_sale_zone $arg_user zone=drop:1m;
--- config
    location /drop { flash_sale zone=drop; flash_sale_item $arg_a; flash_sale_item $arg_b; return 200; }
--- must_die
--- error_log eval
qr/"flash_sale_item" directive is duplicate in \S+nginx\.conf:\d+/



=== TEST 57: flash_sale_verify with an empty item=
--- user_files
>>> token.key
0123456789abcdef0123456789abcdef
--- http_config
    flash_sale_zone $arg_user zone=drop:1m;
--- config
    flash_sale_token_secret ../html/token.key;
    location /checkout { flash_sale_verify zone=drop item= ; return 200; }
--- must_die
--- error_log eval
qr/invalid parameter "item=" in \S+nginx\.conf:\d+/



=== TEST 58: a stock with a variable given twice
--- http_config
    flash_sale_zone $arg_user zone=drop:1m;
--- config
    location /drop { flash_sale zone=drop; flash_sale_max_permits $arg_a; flash_sale_max_permits 3; return 200; }
--- must_die
--- error_log eval
qr/"flash_sale_max_permits" directive is duplicate in \S+nginx\.conf:\d+/
