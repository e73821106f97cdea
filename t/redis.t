# Several hosts, one sale: two nginx instances (2 workers each) keep a zone in one Redis.
# - Five rounds of 5,000 buyers split across both hosts, at once: exactly the cap admitted in
#   total, numbered 1 to the cap with no repeat; every winner then passes through the other host.
# - A permit revoked through host A's API stops passing on host B once B's cache time is up.
# - Redis killed during a burst and started again: nobody is admitted while it is away, new
#   buyers get UNAVAILABLE (known winners still pass), each host logs the incident once, and
#   the sale fills up to exactly the cap after it is back.
# - Redis stopped (SIGSTOP) answers nothing: a new buyer gets UNAVAILABLE after the timeout,
#   which bounds the whole exchange (the retry on a fresh connection included).
# - Under a crowd that never stops, slots freed by expiry or revocation are taken again within
#   about the cache time, as on a local zone; reloads every half second while buyers wait on
#   Redis cut nobody off.
# - on_error=open: with Redis away, a host admits against its own cap.
# - A sold-out sale sends Redis almost nothing: the host remembers SOLD_OUT for its cache time.
#
# Needs redis-server (Debian's redis-server package, installed by scripts/install-deps).

use strict;
use warnings;
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);
use FlashSale::Crowd
    qw(start_nginx stop_nginx crowd crowd_port fetch_at send_body error_log start_redis stop_redis
       redis_cli reload_nginx);

my $a_port = crowd_port();
my $b_port = $a_port + 1;
my $redis_port = $a_port + 10000;
my $password = 'the-test-redis-password';
my %files = ('redis.pass' => "$password\n");

# Every write on disk before Redis answers, so that a killed Redis comes back as it was.
my @durable = ('--requirepass', $password, '--appendonly', 'yes', '--appendfsync', 'always');
start_redis(port => $redis_port, fresh => 1, args => \@durable);

# One host's configuration: the sale at /sale, the API, the metrics, and a backend. Redis's
# timeout is 1 s unless `extra` says otherwise: a crowd on this 2-core machine with Redis
# writing every admission to disk can wait longer than the default 50 ms, and these tests are
# about the sale, not the timeout (the "stopped" one is).
sub host_config {
    my (%opt) = @_;
    my $port = $opt{port};
    my $redis = $opt{redis} // "server=127.0.0.1:$redis_port password=redis.pass";
    my $draw = $opt{draw} ? "flash_sale_draw $opt{draw};" : '';
    my $ttl = $opt{ttl} ? "flash_sale_permit_ttl $opt{ttl};" : '';
    return <<"HTTP";
    flash_sale_zone \$arg_user zone=sale:10m;
    flash_sale_redis zone=sale $redis prefix=$opt{prefix} timeout=1s $opt{extra};
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Worker \$pid always;
        add_header X-Seq \$flash_sale_seq always;
        location /sale {
            flash_sale zone=sale;
            flash_sale_block_ratio $opt{ratio};
            flash_sale_max_permits $opt{cap};
            $draw
            $ttl
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /pay {
            flash_sale zone=sale;
            flash_sale_block_ratio $opt{ratio};
            flash_sale_max_permits $opt{cap};
            flash_sale_release_header X-Flash-Sale-Release;
            proxy_pass http://127.0.0.1:$port/payment-failed;
        }
        location /payment-failed {
            add_header X-Flash-Sale-Release "payment failed" always;
            return 402 "payment failed\\n";
        }
        location /api/ { flash_sale_api; }
        location /metrics { flash_sale_metrics; }
    }
HTTP
}

sub start_hosts {
    my (%opt) = @_;
    my $extra = $opt{extra} // '';
    for ([a => $a_port], [b => $b_port]) {
        my ($name, $port) = @$_;
        # Host a uses nginx's default thread pool, host b one of its own.
        my ($main, $threads) = $name eq 'b' ? ('thread_pool flash_sale threads=8;',
                                               ' threads=flash_sale') : ('', '');
        start_nginx(host => $name, port => $port, workers => 2, files => \%files,
                    log_level => 'info', main => $main,
                    http => host_config(%opt, port => $port, extra => $extra . $threads));
    }
}

sub tally {
    my %count;
    $count{ $_->{sale} }++ for @_;
    return \%count;
}

sub metric {
    my ($port, $name) = @_;
    my $body = fetch_at($port, '/metrics')->{body};
    return $body =~ /^$name\{zone="sale"\} (\d+)$/m ? $1 : undef;
}

sub other { $_[0] == $a_port ? $b_port : $a_port }

for my $round (1 .. 5) {
    start_hosts(prefix => "round$round:", ratio => 0.5, cap => 100, extra => 'cache=10s');
    my @buyers = map { "/sale?user=r$round-buyer$_" } 1 .. 5000;
    my @first = crowd(paths => \@buyers, connections => 64, ports => [$a_port, $b_port]);
    my $count = tally(@first);
    diag explain $count if $ENV{DEBUG_REDIS};
    is(scalar @first, 5000, "round $round: every buyer got an answer");
    is($count->{ADMITTED} // 0, 100, "round $round: exactly the cap is admitted over both hosts");
    my %by_host;
    $by_host{ $_->{port} }++ for grep { $_->{sale} eq 'ADMITTED' } @first;
    ok(($by_host{$a_port} // 0) > 0 && ($by_host{$b_port} // 0) > 0,
       "round $round: both hosts admitted some (A " . ($by_host{$a_port} // 0) . ', B '
       . ($by_host{$b_port} // 0) . ')');
    is(($count->{BLOCKED} // 0) + ($count->{SOLD_OUT} // 0), 4900,
       "round $round: everyone else is BLOCKED or SOLD_OUT");
    my %winner = map { $_->{path} => $_ } grep { $_->{sale} eq 'ADMITTED' } @first;
    is(join(',', sort { $a <=> $b } map { $_->{seq} } values %winner), join(',', 1 .. 100),
       "round $round: the winners hold permits 1 to 100, no gap, no repeat");
    is(redis_cli('-a', $password, 'HLEN', "round$round:{sale}:permits"), "100\n",
       "round $round: Redis holds 100 permits");

    # Every winner through the host that did not admit it: the permit is shared.
    my $passed = 0;
    for my $path (sort keys %winner) {
        my $res = fetch_at(other($winner{$path}{port}), $path);
        $passed++ if $res->{status} == 200 && $res->{sale} eq 'PERMITTED'
                     && $res->{seq} eq $winner{$path}{seq};
    }
    is($passed, 100, "round $round: every winner passes through the other host, same number");
    if ($round == 1) {
        my ($connections) = redis_cli('-a', $password, 'INFO', 'stats')
            =~ /total_connections_received:(\d+)/;
        ok($connections < 500, "round 1: connections to Redis are kept and reused ($connections "
           . 'for about 5,000 round trips)');
    }
    my @losers = grep { !$winner{$_} } @buyers[0 .. 999];
    my @again = crowd(paths => \@losers, connections => 16, ports => [$b_port, $a_port]);
    is(scalar(grep { $_->{status} == 200 } @again), 0, "round $round: no loser passes later");
    stop_nginx($_) for qw(a b);
}

# Per-key draws: one ticket per buyer and round on every host together. 1,000 buyers ask ten
# times each, alternating between the hosts, at ratio 0.9: 10% +- 3% get in (with a secret per
# host, each would hold two tickets, and about 19% would).
{
    start_hosts(prefix => 'draw:', ratio => 0.9, cap => 1000000, draw => 'per_key 1h');
    my @ids = map { "/sale?user=draw-buyer$_" } 1 .. 1000;
    my %seen;
    for my $visit (1 .. 10) {
        my $port = $visit % 2 ? $a_port : $b_port;
        $seen{ $_->{path} }{ $_->{sale} }++
            for crowd(paths => \@ids, connections => 16, ports => [$port]);
    }
    my $lucky = grep { $seen{$_}{ADMITTED} } keys %seen;
    my $share = $lucky / 1000;
    ok($share >= 0.07 && $share <= 0.13,
       sprintf('per_key draws: %.1f%% of buyers who ask both hosts ten times get in', 100 * $share));
    my $mixed = grep { $seen{$_}{BLOCKED} && ($seen{$_}{ADMITTED} || $seen{$_}{PERMITTED}) }
        keys %seen;
    is($mixed, 0, 'per_key draws: every buyer gets the same answer from both hosts');
    is(scalar(grep { ($seen{$_}{ADMITTED} // 0) > 1 } keys %seen), 0,
       'per_key draws: each winner is admitted once, and PERMITTED after');
    stop_nginx($_) for qw(a b);
}

# Revocation: through A's API, seen on B once B's cache time (1 s here) is up.
{
    start_hosts(prefix => 'revoke:', ratio => 0, cap => 1, extra => 'cache=1s');
    is(fetch_at($a_port, '/sale?user=amy')->{sale}, 'ADMITTED', 'revoke: amy is admitted on A');
    is(fetch_at($b_port, '/sale?user=amy')->{sale}, 'PERMITTED', 'revoke: and passes on B');
    my $api = fetch_at($b_port, '/api/zones/sale/permits/amy');
    like($api->{body}, qr/"seq":1/, 'revoke: the API of B reads the permit from Redis');
    $api = fetch_at($a_port, '/api/zones/sale/permits/amy', 'DELETE');
    is($api->{status}, 200, 'revoke: revoked through the API of A');
    is(fetch_at($a_port, '/api/zones/sale/permits/amy')->{status}, 404,
       'revoke: gone from Redis');
    is(fetch_at($a_port, '/sale?user=bob')->{sale}, 'ADMITTED',
       "revoke: bob takes the freed permit on A");
    sleep 1.1;
    my $res = fetch_at($b_port, '/sale?user=amy');
    is($res->{sale}, 'SOLD_OUT', 'revoke: amy no longer passes on B after its cache time');
    is($res->{status}, 503, 'revoke: with the reject status');

    # An operator's grant through A's API, whatever the cap, passes on both; both list it.
    $api = send_body($a_port, 'POST', '/api/zones/sale/permits', '["vip", {"key": "guest"}]');
    like($api->{body}, qr/"already":0.*"granted":2.*"over_cap":true.*"permits":3/,
         'grant: two permits granted in Redis, over the cap of 1, and said so');
    is(fetch_at($a_port, '/sale?user=vip')->{sale}, 'PERMITTED', 'grant: vip passes on A');
    # B knew the sale sold out (amy's answer): it trusts that for its cache time, then asks.
    sleep 1.1;
    is(fetch_at($b_port, '/sale?user=guest')->{sale}, 'PERMITTED',
       'grant: guest passes on B once its cache time is up');
    my $list = fetch_at($b_port, '/api/zones/sale/permits?limit=2')->{body};
    like($list, qr/"next":"gAAAAAAAAAAAAAAAAAAAA3ZpcA".*"key":"bob","key_base64":"Ym9i","seq":2.*"key":"vip","key_base64":"dmlw","seq":3/,
         'list: B lists the permits in Redis, in order, a page at a time');
    like(fetch_at($b_port, '/api/zones/sale/permits?after=gAAAAAAAAAAAAAAAAAAAA3ZpcA')->{body},
         qr/"next":null.*"key":"guest","key_base64":"Z3Vlc3Q","seq":4/, 'list: and the next page');
    # The place of permit 2, whose key ("bob", as the cursor says) is another's now: the
    # listing goes on after number 2, whatever became of it.
    like(fetch_at($b_port, '/api/zones/sale/permits?after=gAAAAAAAAAAAAAAAAAAAAmJvYg')->{body},
         qr/^\{"next":null,"permits":\[\{[^\]]*"key":"vip".*"key":"guest"[^\]]*\]\}$/,
         'list: a cursor leads on from its place');
    is(fetch_at($b_port, '/api/zones/sale/permits?after=bm9ib2R5')->{status}, 400,
       'list: what is not a cursor is a 400');
    is(send_body($a_port, 'POST', '/api/zones/sale/permits', '{}')->{status}, 400,
       'grant: a bad body is refused before Redis is asked');
    $api = fetch_at($a_port, '/api/zones/sale/permits', 'DELETE');
    like($api->{body}, qr/"revoked":3/, 'clear: every permit revoked in Redis');
    is(redis_cli('-a', $password, 'HLEN', 'revoke:{sale}:permits'), "0\n", 'clear: Redis is empty');
    stop_nginx($_) for qw(a b);
}

# A backend's release on one host frees the permit in Redis, for every host.
{
    start_hosts(prefix => 'release:', ratio => 0, cap => 1, extra => 'cache=200ms');
    is(fetch_at($a_port, '/sale?user=amy')->{sale}, 'ADMITTED', 'release: amy is admitted on A');
    is(fetch_at($b_port, '/sale?user=bob')->{sale}, 'SOLD_OUT', 'release: bob finds it sold out on B');
    is(fetch_at($a_port, '/pay?user=amy')->{status}, 402, "release: amy's payment fails on A");
    my $gone;
    for (1 .. 50) {
        $gone = fetch_at($b_port, '/api/zones/sale/permits/amy')->{status} == 404 and last;
        sleep 0.02;
    }
    ok($gone, 'release: the permit is gone from Redis');
    sleep 0.3;
    is(fetch_at($b_port, '/sale?user=bob')->{sale}, 'ADMITTED', 'release: bob takes the slot on B')
        or diag error_log('a');
    stop_nginx($_) for qw(a b);
}

# nginx -s reload on a host: its winners still pass, and the numbering goes on from Redis.
{
    start_hosts(prefix => 'reload:', ratio => 0, cap => 5, extra => 'cache=10s');
    is(fetch_at($a_port, '/sale?user=r1')->{seq}, 1, 'reload: r1 holds permit 1 (on A)');
    is(fetch_at($b_port, '/sale?user=r2')->{seq}, 2, 'reload: r2 holds permit 2 (on B)');
    reload_nginx('a');
    my $res = fetch_at($a_port, '/sale?user=r1');
    is("$res->{sale} $res->{seq}", 'PERMITTED 1', 'reload: r1 still passes on A, same number');
    $res = fetch_at($a_port, '/sale?user=r2');
    is("$res->{sale} $res->{seq}", 'PERMITTED 2', "reload: and so does B's winner");
    $res = fetch_at($a_port, '/sale?user=r3');
    is("$res->{sale} $res->{seq}", 'ADMITTED 3', 'reload: the next buyer gets permit 3');
    stop_nginx($_) for qw(a b);
}

# Overrides: a PATCH through A's API is kept in Redis and reaches B.
{
    start_hosts(prefix => 'patch:', ratio => 0, cap => 1, extra => 'cache=300ms');
    is(fetch_at($a_port, '/sale?user=p1')->{sale}, 'ADMITTED', 'patch: p1 takes the one permit');
    is(fetch_at($b_port, '/sale?user=p2')->{sale}, 'SOLD_OUT', 'patch: p2 finds it sold out on B');
    my $api = send_body($a_port, 'PATCH', '/api/zones/sale', '{"max_permits": 2}');
    like($api->{body}, qr/"overrides":\{[^}]*"max_permits":2/, 'patch: A keeps a cap of 2');
    like(redis_cli('-a', $password, 'HGETALL', 'patch:{sale}:overrides'), qr/max_permits\s+2/,
         'patch: in Redis');
    is(send_body($a_port, 'PATCH', '/api/zones/sale', '{"max_permits": "two"}')->{status}, 400,
       'patch: a bad one is refused before Redis is asked');
    my $sale = '';
    my $deadline = time + 3;
    while (time < $deadline) {
        $sale = fetch_at($b_port, '/sale?user=p3')->{sale};
        last if $sale eq 'ADMITTED';
        sleep 0.1;
    }
    is($sale, 'ADMITTED', 'patch: B admits under the new cap once its cache time is up');
    like(fetch_at($b_port, '/api/zones/sale')->{body}, qr/"overrides":\{[^}]*"max_permits":2/,
         'patch: B shows the override');
    is(redis_cli('-a', $password, 'HLEN', 'patch:{sale}:permits'), "2\n",
       'patch: two permits in all');
    $api = send_body($b_port, 'PATCH', '/api/zones/sale', '{"max_permits": null}');
    unlike($api->{body}, qr/"overrides":\{[^}]*"max_permits":2/, 'patch: removed through B');
    is(redis_cli('-a', $password, 'HGETALL', 'patch:{sale}:overrides'), "\n",
       'patch: and from Redis');
    stop_nginx($_) for qw(a b);
}

# Permits that expire: the expiry is kept in Redis, and an expired permit's slot goes to the
# next buyer, whichever host admitted it.
{
    start_hosts(prefix => 'ttl:', ratio => 0, cap => 1, extra => 'cache=200ms');
    my $api = send_body($a_port, 'POST', '/api/zones/sale/permits', '[{"key": "amy", "ttl": "1s"}]');
    like($api->{body}, qr/"granted":1/, 'ttl: amy is granted a permit of one second on A');
    like(fetch_at($b_port, '/api/zones/sale/permits/amy')->{body}, qr/"expires":"\d{4}-/,
         'ttl: B reads its expiry from Redis');
    is(fetch_at($b_port, '/sale?user=amy')->{sale}, 'PERMITTED', 'ttl: amy passes on B');
    is(fetch_at($b_port, '/sale?user=bob')->{sale}, 'SOLD_OUT', 'ttl: bob finds it sold out');
    sleep 1.3;
    is(fetch_at($a_port, '/sale?user=bob')->{sale}, 'ADMITTED',
       'ttl: once it expired, bob takes the slot on A');
    is(fetch_at($b_port, '/sale?user=amy')->{sale}, 'SOLD_OUT', 'ttl: and amy is a new buyer again');
    stop_nginx($_) for qw(a b);
}

# Redis killed during a burst, then started again.
{
    start_hosts(prefix => 'outage:', ratio => 0.5, cap => 1000, extra => 'cache=10s');
    my @buyers = map { "/sale?user=out-buyer$_" } 1 .. 8000;
    my @early = crowd(paths => [@buyers[0 .. 199]], connections => 16,
                      ports => [$a_port, $b_port]);
    my %winner = map { $_->{path} => $_ } grep { $_->{sale} eq 'ADMITTED' } @early;
    ok(keys %winner > 0 && keys %winner < 1000,
       'outage: some were admitted before Redis went away (' . scalar(keys %winner) . ')');

    # The burst: Redis is killed a moment after it starts.
    pipe(my $r, my $w) or die $!;
    my $kid = fork // die $!;
    if ($kid == 0) {
        close $r;
        my @burst = crowd(paths => [@buyers[200 .. 3199]], connections => 32,
                          ports => [$a_port, $b_port]);
        print $w "$_->{path} $_->{sale} $_->{seq} $_->{port}\n" for @burst;
        close $w;
        POSIX::_exit(0);
    }
    close $w;
    # Killed once the burst has admitted a couple of hundred buyers, well before the cap.
    my $deadline = time + 10;
    while (time < $deadline) {
        last if redis_cli('-a', $password, 'HLEN', 'outage:{sale}:permits') >= 300;
        sleep 0.005;
    }
    stop_redis('KILL');
    my @burst;
    while (my $line = <$r>) {
        my ($path, $sale, $seq, $port) = split ' ', $line;
        push @burst, { path => $path, sale => $sale, seq => $seq, port => $port };
    }
    waitpid $kid, 0;
    is(scalar @burst, 3000, 'outage: every buyer of the burst got an answer');
    my $burst = tally(@burst);
    ok(($burst->{UNAVAILABLE} // 0) > 0,
       'outage: new buyers got UNAVAILABLE while Redis was away (' . ($burst->{UNAVAILABLE} // 0)
       . ')');
    $winner{ $_->{path} } = $_ for grep { $_->{sale} eq 'ADMITTED' } @burst;

    # Redis is away: nobody new is admitted, known winners still pass.
    my @away = crowd(paths => [@buyers[3200 .. 3999]], connections => 16,
                     ports => [$a_port, $b_port]);
    my $away = tally(@away);
    is($away->{ADMITTED} // 0, 0, 'outage: nobody is admitted while Redis is away');
    is(($away->{UNAVAILABLE} // 0) + ($away->{BLOCKED} // 0), 800,
       'outage: new buyers are UNAVAILABLE (or BLOCKED by the draw)');
    my $known = (grep { $_->{port} == $a_port } values %winner)[0];
    is(fetch_at($a_port, $known->{path})->{sale}, 'PERMITTED',
       'outage: a winner the host knows still passes');
    like(fetch_at($a_port, '/metrics')->{body}, qr/^flash_sale_redis_up\{zone="sale"\} 0$/m,
         'outage: the metrics say Redis is down');
    like(fetch_at($a_port, '/api/zones/sale')->{body}, qr/"redis":\{"calls":\d+,"errors":\d+,"errors_by_kind":\{[^}]*\},"prefix":"[^"]*","server":"[^"]*","up":false}/,
         'outage: and so does the zone in the API');

    start_redis(port => $redis_port, args => \@durable);
    sleep 1.1;
    # A host tries Redis again once a second, with one request (one the draw lets through):
    # that one is served by Redis.
    for my $port ($a_port, $b_port) {
        my $res = { sale => 'BLOCKED' };
        for my $n (1 .. 50) {
            $res = fetch_at($port, "/sale?user=probe$port-$n");
            last if $res->{sale} ne 'BLOCKED';
        }
        is($res->{sale}, 'ADMITTED',
           "outage: the first request after a second finds Redis back ($port)");
        $winner{ $res->{path} } = $res if $res->{sale} eq 'ADMITTED';
    }
    my @after = crowd(paths => [@buyers[4000 .. 7999]], connections => 32,
                      ports => [$a_port, $b_port]);
    my $after = tally(@after);
    is($after->{UNAVAILABLE} // 0, 0, 'outage: normal service once Redis is back')
        or diag join "\n", grep { /flash_sale_redis/ } map { split /\n/, error_log($_) } qw(a b);
    $winner{ $_->{path} } = $_ for grep { $_->{sale} eq 'ADMITTED' } @after;
    is(redis_cli('-a', $password, 'HLEN', 'outage:{sale}:permits'), "1000\n",
       'outage: Redis holds exactly the cap');
    ok(keys %winner <= 1000, 'outage: never more admitted than the cap (' . keys(%winner) . ')');
    my %seq;
    $seq{ $_->{seq} }++ for values %winner;
    ok(!grep({ $_ > 1 } values %seq), 'outage: no permit number was given twice');
    # A buyer whose admission Redis wrote just before it was killed was told UNAVAILABLE, yet
    # holds a permit: asking again, he is PERMITTED. Every permit belongs to somebody told so.
    my @unsure = map { $_->{path} } grep { $_->{sale} eq 'UNAVAILABLE' } @burst;
    my @again = crowd(paths => \@unsure, connections => 8, ports => [$a_port, $b_port]);
    my $holders = grep { $_->{sale} eq 'PERMITTED' } @again;
    is(keys(%winner) + $holders, 1000,
       "outage: permits written as Redis died ($holders) pass their buyers when they ask again");
    for my $host (qw(a b)) {
        my $log = error_log($host);
        my $went = () = $log =~ /flash_sale_redis zone "sale": redis at \S+ failed/g;
        my $back = () = $log =~ /flash_sale_redis zone "sale": redis at \S+ answers again/g;
        is($went, 1, "outage: host $host logged the incident once")
            or diag join "\n", grep { /flash_sale_redis/ } split /\n/, $log;
        is($back, 1, "outage: host $host logged the recovery once");
    }
    like(fetch_at($a_port, '/metrics')->{body}, qr/^flash_sale_redis_up\{zone="sale"\} 1$/m,
         'outage: the metrics say Redis is up again');
    like(fetch_at($a_port, '/metrics')->{body},
         qr/^flash_sale_redis_errors_total\{zone="sale",kind="connection"\} [1-9]\d*$/m,
         'outage: the metrics count the lost connections');

    # A sold-out sale asks Redis almost nothing: 1,000 more buyers, within the cache time.
    my $calls = metric($a_port, 'flash_sale_redis_calls_total');
    my @sold = crowd(paths => [map { "/sale?user=late$_" } 1 .. 1000], connections => 8,
                     ports => [$a_port]);
    my $sold = tally(@sold);
    is(($sold->{SOLD_OUT} // 0) + ($sold->{BLOCKED} // 0), 1000,
       'sold out: late buyers are SOLD_OUT (or BLOCKED)');
    my $more = metric($a_port, 'flash_sale_redis_calls_total') - $calls;
    ok($more <= 2, "sold out: 1,000 requests cost $more round trips to Redis");
    stop_nginx($_) for qw(a b);
}

# Redis that does not answer at all: UNAVAILABLE once `timeout` is up, the whole exchange
# (the kept connection, then the retry on a fresh one) within it. Three new buyers, a second
# apart (while Redis is down one request per second tries it): each is answered in about
# 0.2 s, where each step taking its own timeout gave about three times that.
{
    start_hosts(prefix => 'stopped:', ratio => 0, cap => 10, extra => 'timeout=200ms cache=500ms');
    is(fetch_at($a_port, '/sale?user=first')->{sale}, 'ADMITTED', 'stopped: admitted first');
    fetch_at($a_port, "/sale?user=warm$_") for 1 .. 4;    # connections kept by both workers
    sleep 0.6;    # past the cache time: what A knows of "first" is stale when Redis stops
    my $pid = redis_cli('-a', $password, 'INFO', 'server') =~ /process_id:(\d+)/ ? $1 : 0;
    kill 'STOP', $pid;
    my (@took, @sales);
    for my $n (1 .. 3) {
        my $t0 = time;
        my $res = fetch_at($a_port, "/sale?user=second$n");
        push @took, time - $t0;
        push @sales, "$res->{sale} $res->{status}";
        sleep 1.05;
    }
    my $winner = fetch_at($a_port, '/sale?user=first')->{sale};
    kill 'CONT', $pid;
    is(join(', ', @sales), join(', ', ('UNAVAILABLE 503') x 3),
       'stopped: new buyers get UNAVAILABLE with the reject status');
    my ($median) = (sort { $a <=> $b } @took)[1];
    ok($median < 0.4, sprintf('stopped: answered within the timeout of 0.2 s (%s s)',
                              join(' ', map { sprintf '%.3f', $_ } @took)));
    ok($median >= 0.15, sprintf('stopped: after waiting for it (%.3f s)', $median));
    like(error_log('a'), qr/redis at \S+ failed: no answer within timeout=200ms/,
         'stopped: the log says it timed out');
    like(fetch_at($a_port, '/metrics')->{body},
         qr/^flash_sale_redis_errors_total\{zone="sale",kind="timeout"\} [1-9]\d*$/m,
         'stopped: the metrics count a timeout');
    is($winner, 'PERMITTED', 'stopped: the winner passes, stale as what the host knows is');
    stop_nginx($_) for qw(a b);
}

# Redis frozen while a crowd of new buyers waits on it: each is told UNAVAILABLE once the
# timeout is up, and the admissions they had sent (on connections kept open) must not be made
# when Redis runs them later, after their deadline: otherwise buyers told UNAVAILABLE hold the
# whole cap, and later buyers are told SOLD_OUT.
{
    start_hosts(prefix => 'frozen:', ratio => 0, cap => 1000, extra => 'timeout=200ms');
    my $n = 0;
    my $wave = sub {
        my ($count, $connections) = @_;
        my @paths = map { '/sale?user=frozen-' . $n++ } 1 .. $count;
        return tally(crowd(paths => \@paths, connections => $connections, ports => [$a_port, $b_port]));
    };
    is($wave->(64, 32)->{ADMITTED}, 64, 'frozen: 64 buyers admitted, on connections kept open');
    my $pid = redis_cli('-a', $password, 'INFO', 'server') =~ /process_id:(\d+)/ ? $1 : 0;
    kill 'STOP', $pid;
    my $told = $wave->(200, 50);
    kill 'CONT', $pid;
    sleep 0.5;
    is($told->{UNAVAILABLE} // 0, 200, 'frozen: every new buyer told UNAVAILABLE');
    is(redis_cli('-a', $password, 'HLEN', 'frozen:{sale}:permits') + 0, 64,
       'frozen: Redis made none of the admissions it ran after their deadline');
    # While Redis is down, one request per host and second tries it; once one got through on
    # each host, the others are admitted.
    for my $port ($a_port, $b_port) {
        my $t0 = time;
        sleep 0.2 until fetch_at($port, '/sale?user=frozen-probe-' . $n++)->{sale} eq 'ADMITTED'
            || time - $t0 > 5;
    }
    my $later = $wave->(100, 16);
    is($later->{ADMITTED} // 0, 100, 'frozen: once Redis is back, new buyers are admitted');
    like(error_log('a'), qr/LATE: Redis ran it after its deadline|no answer within timeout=200ms/,
         'frozen: the log says the round trips timed out');
    stop_nginx($_) for qw(a b);
}

# A crowd that never stops, on a sale whose permits expire after 2 s (cap 30, cache 500 ms):
# every expiry frees 30 slots in Redis, and the hosts admit 30 new buyers again each time,
# within about the cache time, as a local zone would. (A host that trusted its SOLD_OUT until
# a single buyer got in admitted about one buyer per host and cache time instead.)
{
    start_hosts(prefix => 'reopen:', ratio => 0, cap => 30, ttl => '2s', extra => 'cache=500ms');
    my ($n, $t0) = (0, time);
    my @admitted;    # [seconds since the start, admissions] per wave of buyers
    while (time - $t0 < 7) {
        my @paths = map { '/sale?user=reopen-' . $n++ } 1 .. 200;
        my $t = time - $t0;
        my $count = tally(crowd(paths => \@paths, connections => 16, ports => [$a_port, $b_port]));
        push @admitted, [$t, $count->{ADMITTED} // 0];
        my $held = redis_cli('-a', $password, 'HLEN', 'reopen:{sale}:permits') + 0;
        ok($held <= 30, "reopen: never more than the cap held in Redis ($held at "
                        . sprintf('%.1f', $t) . ' s)') if $held > 30;
    }
    my $total = 0;
    $total += $_->[1] for @admitted;
    my $late = 0;
    $late += $_->[1] for grep { $_->[0] >= 1.5 } @admitted;
    ok($total >= 100, "reopen: $total buyers admitted in 7 s of crowd, about 30 per expiry "
                      . '(' . join(' ', map { sprintf '%.1fs:%d', @$_ } grep { $_->[1] } @admitted) . ')');
    ok($late >= 60, "reopen: $late of them after the first expiry");
    stop_nginx($_) for qw(a b);
}

# The same under a crowd, for slots freed by revocation: the sale is sold out (cap 20), the
# crowd goes on, and 10 permits are revoked through A's API; within the cache time (1 s)
# exactly 10 new buyers get in, across both hosts, and not one more.
{
    start_hosts(prefix => 'revoked:', ratio => 0, cap => 20);
    my $n = 0;
    my $wave = sub {
        my @paths = map { '/sale?user=revoked-' . $n++ } 1 .. 100;
        return crowd(paths => \@paths, connections => 16, ports => [$a_port, $b_port]);
    };
    my @first = $wave->();
    my @winners = map { $_->{path} =~ /user=(\S+)/ } grep { $_->{sale} eq 'ADMITTED' } @first;
    is(scalar @winners, 20, 'revoked: the first 20 buyers are admitted');
    $wave->() for 1 .. 2;    # sold out, and both hosts know it
    my @revoked = grep {
        fetch_at($a_port, "/api/zones/sale/permits/$_", 'DELETE')->{status} == 200
    } @winners[0 .. 9];
    is(scalar @revoked, 10, 'revoked: 10 permits revoked through A\'s API');
    my ($again, $t0) = (0, time);
    $again += tally($wave->())->{ADMITTED} // 0 while time - $t0 < 2;
    is($again, 10, 'revoked: 10 freed slots are taken again within 2 s of crowd, no more');
    is(redis_cli('-a', $password, 'HLEN', 'revoked:{sale}:permits') + 0, 20,
       'revoked: Redis holds exactly the cap');
    stop_nginx($_) for qw(a b);
}

# nginx -s reload every half second while a crowd of new buyers waits on Redis (every draw
# winner is a round trip): the old workers answer every request they hold before they exit.
# Nobody is cut off (each request on a connection of its own, never sent twice), nginx logs no
# socket left open, and every permit in Redis belongs to a buyer who was told ADMITTED.
{
    start_hosts(prefix => 'reloading:', ratio => 0, cap => 100000);
    my $reloader = fork // die "fork: $!";
    if ($reloader == 0) {
        for (1 .. 8) {
            sleep 0.5;
            FlashSale::Crowd::reload_nginx('a');
        }
        POSIX::_exit(0);
    }
    my ($n, @results) = (0);
    while (waitpid($reloader, POSIX::WNOHANG()) == 0) {
        my @paths = map { '/sale?user=reload-' . $n++ } 1 .. 200;
        push @results, crowd(paths => \@paths, connections => 32, ports => [$a_port], once => 1);
    }
    is($? >> 8, 0, 'reload: eight reloads of host A during the crowd');
    my $count = tally(@results);
    is(scalar @results, $n, "reload: every request sent ($n) came back");
    is($count->{NONE} // 0, 0, 'reload: every request answered');
    is($count->{ADMITTED}, scalar @results, 'reload: every buyer admitted');
    unlike(error_log('a'), qr/open socket|aborting/, 'reload: no socket left open by an old worker');
    my %told = map { $_->{path} =~ /user=(\S+)/ ? ($1 => $_->{sale}) : () } @results;
    my @untold = grep { !$told{$_} || $told{$_} ne 'ADMITTED' }
        split /\n/, redis_cli('-a', $password, 'HKEYS', 'reloading:{sale}:permits');
    is(scalar @untold, 0, 'reload: every permit in Redis was told to its buyer')
        or diag("@untold[0 .. 9]");
    stop_nginx($_) for qw(a b);
}

# cache=0: the host asks Redis about every returning winner, and so sees a revocation at once.
{
    start_hosts(prefix => 'nocache:', ratio => 0, cap => 10, extra => 'cache=0');
    is(fetch_at($a_port, '/sale?user=w')->{sale}, 'ADMITTED', 'cache=0: w is admitted on A');
    is(fetch_at($b_port, '/sale?user=w')->{sale}, 'PERMITTED', 'cache=0: and passes on B');
    sleep 0.1;    # B's first read of the overrides, a round trip nobody waits for, is in
    my $calls = metric($b_port, 'flash_sale_redis_calls_total');
    fetch_at($b_port, '/sale?user=w') for 1 .. 5;
    is(metric($b_port, 'flash_sale_redis_calls_total') - $calls, 5,
       'cache=0: five returning visits, five round trips');
    fetch_at($a_port, '/api/zones/sale/permits/w', 'DELETE');
    is(fetch_at($b_port, '/sale?user=w')->{seq}, 2, 'cache=0: revoked on A, a new permit on B');
    stop_nginx($_) for qw(a b);
}

# on_error=open: Redis away, each host admits against its own cap.
{
    start_hosts(prefix => 'open:', ratio => 0, cap => 3,
                redis => 'server=127.0.0.1:' . ($redis_port + 1), extra => 'on_error=open');
    my @a = map { fetch_at($a_port, "/sale?user=open-a$_")->{sale} } 1 .. 5;
    is(join(' ', @a), 'ADMITTED ADMITTED ADMITTED SOLD_OUT SOLD_OUT',
       'on_error=open: host A admits up to its own cap');
    my @b = map { fetch_at($b_port, "/sale?user=open-b$_")->{sale} } 1 .. 4;
    is(join(' ', @b), 'ADMITTED ADMITTED ADMITTED SOLD_OUT', 'on_error=open: and so does B');
    like(error_log('a'), qr/admitted against this host's own cap of 3 \(on_error=open\)/,
         'on_error=open: the log says so');
    stop_nginx($_) for qw(a b);
}

# A wrong password: the log names Redis's answer.
{
    start_hosts(prefix => 'auth:', ratio => 0, cap => 3,
                redis => "server=127.0.0.1:$redis_port");
    is(fetch_at($a_port, '/sale?user=x')->{sale}, 'UNAVAILABLE', 'no password: UNAVAILABLE');
    like(error_log('a'), qr/redis at \S+ failed: authentication failed: .*(NOAUTH|Authentication|unauthenticated)/i,
         'no password: the log says Redis wants one');
    like(fetch_at($a_port, '/metrics')->{body},
         qr/^flash_sale_redis_errors_total\{zone="sale",kind="auth"\} [1-9]\d*$/m,
         'no password: the metrics count an authentication failure');
    stop_nginx($_) for qw(a b);
}

# A thread pool too small for the crowd (one thread, a queue of one) while Redis is frozen:
# the round trips nginx cannot queue are Redis failing to answer, as a buyer sees it (a new
# buyer gets UNAVAILABLE, the API 502 with its JSON reason), and counted as kind="local".
{
    stop_nginx($_) for qw(a b);
    start_nginx(host => 'a', port => $a_port, workers => 1, files => \%files,
                main => 'thread_pool tiny threads=1 max_queue=1;',
                http => host_config(prefix => 'tiny:', ratio => 0, cap => 100, port => $a_port,
                                    extra => 'timeout=300ms threads=tiny'));
    # The first request also reads the sale's overrides, a round trip of its own: with a queue
    # of one, the admission behind it is not queued until the thread has taken it.
    fetch_at($a_port, '/sale?user=tiny-warm');
    sleep 0.3;
    is(fetch_at($a_port, '/sale?user=tiny-first')->{sale}, 'ADMITTED', 'tiny pool: admitted first');
    my $pid = redis_cli('-a', $password, 'INFO', 'server') =~ /process_id:(\d+)/ ? $1 : 0;
    kill 'STOP', $pid;
    my $gate = tally(crowd(paths => [map { "/sale?user=tiny-$_" } 1 .. 8], connections => 8,
                           once => 1, ports => [$a_port]));
    my @api = crowd(paths => [('/api/zones/sale/permits') x 4], connections => 4, once => 1,
                    ports => [$a_port]);
    kill 'CONT', $pid;
    is($gate->{UNAVAILABLE} // 0, 8, 'tiny pool: every new buyer told UNAVAILABLE');
    is(join(' ', map { $_->{status} } @api), '502 502 502 502',
       'tiny pool: the API answers 502, whether its round trip ran or could not be queued');
    like(error_log('a'), qr/redis at \S+ failed: nginx's thread pool queue is full/,
         'tiny pool: the log says why');
    like(fetch_at($a_port, '/metrics')->{body},
         qr/^flash_sale_redis_errors_total\{zone="sale",kind="local"\} [1-9]\d*$/m,
         'tiny pool: the metrics count kind="local"');
    stop_nginx('a');
}

stop_redis();
done_testing();
