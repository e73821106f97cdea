# The admin API for the items of a zone kept in Redis: two nginx hosts share one Redis. An
# item's stock set through one host's API is seen through the other's, and set back to the
# configuration's (null) it is gone from Redis; items are listed page by page in the order of
# their bytes; a bad body changes nothing; a buyer's permit for an item is read and revoked
# through either host with ?item=. Counting permits per item in Redis is the admission
# scripts' work (the `items` hash), not tested here.
#
# Needs redis-server (Debian's redis-server package, installed by scripts/install-deps).

use strict;
use warnings;
use Test::More;
use FlashSale::Crowd
    qw(start_nginx stop_nginx crowd_port fetch_at send_body start_redis stop_redis redis_cli);

my $a_port = crowd_port();
my $b_port = $a_port + 1;
# A port near the hosts' (TEST_NGINX_CROWD_PORT + 40): its own, beside other work's.
my $redis_port = $a_port + 40;
my $prefix = 'items:';

start_redis(port => $redis_port, fresh => 1);

for ([a => $a_port], [b => $b_port]) {
    my ($name, $port) = @$_;
    start_nginx(host => $name, port => $port, workers => 2, http => <<"HTTP");
    map \$arg_sku \$stock { red-42 2; blue-43 1; white-44 5; default 0; }
    flash_sale_zone \$arg_user zone=drop:1m;
    flash_sale_redis zone=drop server=127.0.0.1:$redis_port prefix=$prefix timeout=1s;
    server {
        listen 127.0.0.1:$port;
        add_header X-Sale \$flash_sale_status always;
        location /buy {
            flash_sale zone=drop;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /api/ { flash_sale_api; }
        location /metrics { flash_sale_metrics; }
    }
HTTP
}

my $stock_hash = "$prefix\{drop\}:stock";
my $api = '/api/zones/drop';

my $res = send_body($a_port, 'PATCH', "$api/items/red-42", '{"max_permits": 5}');
is($res->{status}, 200, 'a stock set through host A');
like($res->{body},
     qr/^\{"cap":5,"item":"red-42","left":5,"max_permits":5,"permits":0,"registered":null,"stock":null\}$/,
     'the item as it is now: the API stock in force');
is(redis_cli('HGET', $stock_hash, 'red-42'), "5\n", 'kept in Redis');

$res = fetch_at($b_port, "$api/items/red-42");
is($res->{status}, 200, 'host B has the item');
like($res->{body}, qr/"cap":5,"item":"red-42","left":5,"max_permits":5,/, 'with the stock set on A');

is(send_body($b_port, 'PATCH', "$api/items/white-44", '{"max_permits": 0}')->{status}, 200,
   'a stock of 0 set through host B');
is(send_body($a_port, 'PATCH', "$api/items/blue-43", '{"max_permits": 2}')->{status}, 200,
   'another through host A');

$res = fetch_at($a_port, "$api/items?limit=2");
like($res->{body},
     qr/^\{"items":\[\{[^{}]*"item":"blue-43"[^{}]*\},\{[^{}]*"item":"red-42"[^{}]*\}\],"next":"cmVkLTQy"\}$/,
     'a page of items, in the order of their bytes, and the next');
$res = fetch_at($b_port, "$api/items?limit=2&after=cmVkLTQy");
like($res->{body},
     qr/^\{"items":\[\{"cap":0,"item":"white-44","left":0,"max_permits":0,"permits":0,"registered":null,"stock":null\}\],"next":null\}$/,
     'the next page, through the other host: the last one');
is(fetch_at($a_port, "$api/items?limit=0")->{status}, 400, 'a bad limit costs no round trip');

for my $bad ('{"max_permits": -1}', '{"max_permits": 1.5}', '{"stock": 3}', '{}', '{"max_permits"') {
    $res = send_body($a_port, 'PATCH', "$api/items/blue-43", $bad);
    is($res->{status}, 400, "bad body $bad: 400");
    like($res->{body}, qr/^\{"error":"[^"]+/, "bad body $bad: a reason");
}
is(redis_cli('HGET', $stock_hash, 'blue-43'), "2\n", 'the bad bodies changed nothing');

$res = send_body($b_port, 'PATCH', "$api/items/red-42", '{"max_permits": null}');
is($res->{status}, 200, 'set back to null through host B');
like($res->{body}, qr/"cap":null,"item":"red-42","left":null,"max_permits":null,/,
     'the configuration applies again');
is(redis_cli('HEXISTS', $stock_hash, 'red-42'), "0\n", 'the stock is gone from Redis');
is(fetch_at($a_port, "$api/items/red-42")->{status}, 404,
   'an item with no permit and no stock is no item of the zone');
like(fetch_at($a_port, "$api/items")->{body}, qr/^\{"items":\[[^\]]*"blue-43"[^\]]*"white-44"[^\]]*\],"next":null\}$/,
     'the listing without it');

# A buyer's permit for an item, through either host (blue-43: its API stock is 2, its
# configured one 1; either way there is room for one).
$res = fetch_at($a_port, '/buy?user=u1&sku=blue-43');
is($res->{status}, 200, 'u1 buys blue-43 on host A') or diag explain $res;
$res = fetch_at($b_port, "$api/permits/u1?item=blue-43");
is($res->{status}, 200, 'host B reads the permit for the item');
like($res->{body}, qr/^\{"expires":null,"item":"blue-43","key":"u1","key_base64":"dTE","seq":\d+\}$/,
     'and shows its item');
like(fetch_at($b_port, "$api/permits")->{body}, qr/"item":"blue-43","key":"u1"/,
     'the listing shows the item');
is(fetch_at($b_port, "$api/permits/u1")->{status}, 404, 'no permit without the item');
is(fetch_at($b_port, "$api/permits/u1?item=white-44")->{status}, 404, 'nor for another item');
$res = fetch_at($b_port, "$api/permits/u1?item=blue-43", 'DELETE');
like($res->{body}, qr/^\{"revoked":1\}$/, 'revoked through host B');
is(fetch_at($a_port, "$api/permits/u1?item=blue-43")->{status}, 404, 'gone on host A');

$res = send_body($a_port, 'POST', "$api/permits", '[{"key": "vip", "item": "white-44"}]');
like($res->{body}, qr/"already":0,"granted":1,/, 'a grant for an item through host A');
like(fetch_at($b_port, "$api/permits/vip?item=white-44")->{body}, qr/"item":"white-44","key":"vip"/,
     'read through host B');

unlike(fetch_at($a_port, '/metrics')->{body}, qr/^flash_sale_items/m,
       'no item figures for a zone kept in Redis (a round trip per scrape)');

stop_nginx('a');
stop_nginx('b');
stop_redis();
done_testing();
