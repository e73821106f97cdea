# Items in a zone kept in Redis (flash_sale_item with flash_sale_redis): two nginx hosts of 2
# workers each on one Redis, stock per item from a map, one item per buyer.
# - A crowd over both hosts asking for every item: per item exactly its stock admitted in
#   total, nobody holds two items, an item of no stock SOLD_OUT at once, every winner
#   PERMITTED on the other host; Redis's counts of items and buyers exact.
# - A buyer racing for three items at once, on both hosts, gets exactly one.
# - An item's SOLD_OUT and a buyer's LIMIT_REACHED are not the sale's SOLD_OUT: buyers of other
#   items are still admitted on that host.
# - Grants count against the buyer's limit; items whose names look like a field's parts are
#   counted as themselves.
# - Expiry (flash_sale_permit_ttl) and revocation (a backend's release, the API) give the
#   item's slot back, and the buyer's.
# - The line is the buyer's: one place whatever the items he asks for; called, he is admitted
#   for the item he asks for, and no other.
# - The pre-queue, per item: at the start, each item up to its stock, nobody past his limit.
# - on_error=open: with Redis away, a host sells each item against its own zone, limit
#   included.
#
# Needs redis-server (Debian's redis-server package, installed by scripts/install-deps).

use strict;
use warnings;
use Test::More;
use MIME::Base64 ();
use POSIX qw(strftime);
use Time::HiRes qw(sleep time);
use FlashSale::Crowd
    qw(start_nginx stop_nginx crowd crowd_port fetch_at send_body start_redis redis_cli);

my $a_port = crowd_port();
my $b_port = $a_port + 1;
my $redis_port = $a_port + 50;
start_redis(port => $redis_port, fresh => 1);

sub rfc3339 {
    my ($t) = @_;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime int $t) . sprintf('.%03dZ', ($t - int $t) * 1000);
}

# One host's configuration: the items' sale at /sale (and /pay, whose backend releases the
# permit), the API and a backend.
sub host_config {
    my (%opt) = @_;
    my $port = $opt{port};
    my $ttl = $opt{ttl} ? "flash_sale_permit_ttl $opt{ttl};" : '';
    my $queue = $opt{queue} ? "flash_sale_queue $opt{queue};" : '';
    my $start = $opt{start}
        ? "flash_sale_start ${\ rfc3339($opt{start})}; flash_sale_prequeue 1h;" : '';
    my $sale = <<"SALE";
            flash_sale zone=items;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            flash_sale_max_per_buyer 1;
            $ttl
            $start
            $queue
SALE
    return <<"HTTP";
    map \$arg_sku \$stock { a 5; b 3; c 0; d 100; e 100; f 100; "9:x" 2; default 0; }
    flash_sale_zone \$arg_user zone=items:10m;
    flash_sale_redis zone=items server=127.0.0.1:$opt{redis_port} prefix=$opt{prefix} timeout=1s cache=$opt{cache} $opt{extra};
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Worker \$pid always;
        add_header X-Seq \$flash_sale_seq always;
        location /sale {
$sale
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /pay {
$sale
            flash_sale_release_header X-Flash-Sale-Release;
            proxy_pass http://127.0.0.1:$port/payment-failed;
        }
        location /backend { return 200 "ok\\n"; }
        location /payment-failed {
            add_header X-Flash-Sale-Release "payment failed" always;
            return 402 "payment failed\\n";
        }
        location /api/ { flash_sale_api; }
    }
HTTP
}

sub start_hosts {
    my (%opt) = @_;
    $opt{cache} //= '10s';
    $opt{redis_port} //= $redis_port;
    $opt{extra} //= '';
    for ([a => $a_port], [b => $b_port]) {
        my ($name, $port) = @$_;
        start_nginx(host => $name, port => $port, workers => 2, log_level => 'info',
                    http => host_config(%opt, port => $port));
    }
}

sub stop_hosts { stop_nginx($_) for qw(a b) }

sub other { $_[0] == $a_port ? $b_port : $a_port }

# A hash in Redis as a Perl hash.
sub hash_of {
    my ($key) = @_;
    my @lines = split /\n/, redis_cli('HGETALL', $key);
    my %h;
    while (@lines) {
        my ($k, $v) = splice @lines, 0, 2;
        $h{$k} = $v;
    }
    return \%h;
}

sub sku { $_[0] =~ /sku=([^&]+)/ ? $1 : '' }
sub user { $_[0] =~ /user=([^&]+)/ ? $1 : '' }

sub show { join ',', map { "$_=$_[0]{$_}" } sort keys %{ $_[0] } }

# The crowd: every buyer asks for a, b and c, his requests on different connections (and so
# both hosts) at once.
for my $round (1 .. 2) {
    my $p = "crowd$round:";
    start_hosts(prefix => $p);
    my @paths = map { my $u = "r$round-buyer$_"; map { "/sale?user=$u&sku=$_" } qw(a b c) }
        1 .. 2000;
    my @first = crowd(paths => \@paths, connections => 64, ports => [$a_port, $b_port]);
    is(scalar @first, 6000, "crowd $round: every request got an answer");
    my (%admitted, %by_item, %outcomes, %c);
    for my $r (@first) {
        $outcomes{ $r->{sale} }++;
        $c{ $r->{sale} }++ if sku($r->{path}) eq 'c';
        next unless $r->{sale} eq 'ADMITTED';
        $by_item{ sku($r->{path}) }++;
        push @{ $admitted{ user($r->{path}) } }, $r;
    }
    is(show(\%by_item), 'a=5,b=3', "crowd $round: exactly the stock of each item is admitted");
    is(scalar(grep { @{ $admitted{$_} } > 1 } keys %admitted), 0,
       "crowd $round: nobody is admitted for two items");
    is(show(\%c), 'SOLD_OUT=2000', "crowd $round: item c is SOLD_OUT for everyone");
    is(($outcomes{ADMITTED} // 0) + ($outcomes{SOLD_OUT} // 0) + ($outcomes{LIMIT_REACHED} // 0),
       6000, "crowd $round: every other answer is SOLD_OUT or LIMIT_REACHED ("
       . show(\%outcomes) . ')');
    # Both hosts decided (8 winners may all come through one host by chance: about 1 in 100).
    my %hosts = map { $_->{port} => 1 } grep { $_->{sale} ne 'ADMITTED' } @first;
    is(scalar keys %hosts, 2, "crowd $round: both hosts decided");
    is(show(hash_of("$p\{items}:items")), 'a=5,b=3', "crowd $round: Redis counts 5 a and 3 b");
    my $buyers = hash_of("$p\{items}:buyers");
    is(join(',', sort keys %$buyers), join(',', sort keys %admitted),
       "crowd $round: Redis's buyers are the winners");
    is(scalar(grep { $_ ne '1' } values %$buyers), 0, "crowd $round: one item each");
    is(redis_cli('HLEN', "$p\{items}:permits"), "8\n", "crowd $round: 8 permits in Redis");
    is(show(hash_of("$p\{items}:configured")), 'a=5,b=3,c=0',
       "crowd $round: the configured caps are remembered per item");
    my $passed = 0;
    for my $list (values %admitted) {
        my $won = $list->[0];
        my $res = fetch_at(other($won->{port}), $won->{path});
        $passed++ if $res->{sale} eq 'PERMITTED' && $res->{seq} eq $won->{seq};
    }
    is($passed, 8, "crowd $round: every winner is PERMITTED on the other host, same number");
    # A winner asking for another item is at his limit, on either host, and a loser finds the
    # items sold out.
    my ($winner) = sort keys %admitted;
    my $other_item = sku($admitted{$winner}[0]{path}) eq 'a' ? 'b' : 'a';
    is(fetch_at($a_port, "/sale?user=$winner&sku=$other_item")->{sale}, 'SOLD_OUT',
       "crowd $round: the other item is sold out, said first");
    is(fetch_at($b_port, "/sale?user=$winner&sku=d")->{sale}, 'LIMIT_REACHED',
       "crowd $round: an item in stock is beyond the winner's limit");
    stop_hosts();
}

# Racers: each asks for d, e and f twice, on both hosts, all at once: one permit each.
{
    my $p = 'race:';
    start_hosts(prefix => $p);
    my @paths;
    for my $twice (1 .. 2) {
        for my $i (1 .. 30) {
            push @paths, map { "/sale?user=racer$i&sku=$_&n=$twice" } qw(d e f);
        }
    }
    my @res = crowd(paths => \@paths, connections => 48, ports => [$a_port, $b_port]);
    my (%won, %outcomes);
    for my $r (@res) {
        $outcomes{ $r->{sale} }++;
        $won{ user($r->{path}) }++ if $r->{sale} eq 'ADMITTED';
    }
    is(scalar(keys %won), 30, 'race: every racer is admitted once (' . show(\%outcomes) . ')');
    is(scalar(grep { $won{$_} != 1 } keys %won), 0, 'race: nobody twice');
    is(($outcomes{PERMITTED} // 0) + ($outcomes{LIMIT_REACHED} // 0), 150,
       'race: the others are PERMITTED (the same item) or LIMIT_REACHED');
    my $items = hash_of("$p\{items}:items");
    is(($items->{d} // 0) + ($items->{e} // 0) + ($items->{f} // 0), 30,
       'race: Redis counts 30 permits over d, e and f (' . show($items) . ')');
    my $buyers = hash_of("$p\{items}:buyers");
    is(scalar(grep { $buyers->{"racer$_"} eq '1' } 1 .. 30), 30, 'race: each racer holds one item');
    is(scalar keys %$buyers, 30, 'race: and nobody else');

    # LIMIT_REACHED and an item's SOLD_OUT on a host leave the other items open there.
    for my $port ($a_port, $b_port) {
        is(fetch_at($port, '/sale?user=racer1&sku=d')->{sale} =~ /^(PERMITTED|LIMIT_REACHED)$/
           ? 1 : 0, 1, "race: racer1 is not let in twice on $port");
        is(fetch_at($port, "/sale?user=late$port&sku=c")->{sale}, 'SOLD_OUT',
           "race: item c is sold out on $port");
        is(fetch_at($port, "/sale?user=new$port&sku=d")->{sale}, 'ADMITTED',
           "race: a new buyer of d is admitted on $port right after");
    }

    # Grants count against the limit.
    my $api = send_body($a_port, 'POST', '/api/zones/items/permits',
                        '[{"key": "vip", "item": "a"}]');
    is($api->{status}, 200, 'grant: a permit for item a granted through the API');
    is(fetch_at($b_port, '/sale?user=vip&sku=a')->{sale}, 'PERMITTED', 'grant: vip passes on B');
    is(fetch_at($b_port, '/sale?user=vip&sku=b')->{sale}, 'LIMIT_REACHED',
       'grant: and is at his limit for b');
    is(hash_of("$p\{items}:items")->{a}, 1, 'grant: counted for item a');
    is(hash_of("$p\{items}:buyers")->{vip}, 1, 'grant: and for vip');

    # An item named like a field's parts is counted as itself.
    is(fetch_at($a_port, '/sale?user=colon1&sku=9:x')->{sale}, 'ADMITTED', 'item 9:x: one');
    is(fetch_at($b_port, '/sale?user=colon2&sku=9:x')->{sale}, 'ADMITTED', 'item 9:x: two');
    is(fetch_at($a_port, '/sale?user=colon3&sku=9:x')->{sale}, 'SOLD_OUT', 'item 9:x: its stock');
    is(hash_of("$p\{items}:items")->{'9:x'}, 2, 'item 9:x: counted as "9:x"');
    is(hash_of("$p\{items}:buyers")->{colon2}, 1, 'item 9:x: its buyers counted');

    # CLEAR empties the counts too.
    is(fetch_at($a_port, '/api/zones/items/permits', 'DELETE')->{status}, 200, 'clear: done');
    is(redis_cli('EXISTS', "$p\{items}:items", "$p\{items}:buyers", "$p\{items}:permits"), "0\n",
       'clear: no permit, no count left');
    stop_hosts();
}

# Expiry: an item's slot comes back, and so does the buyer's limit.
{
    my $p = 'ttl:';
    start_hosts(prefix => $p, ttl => '2s', cache => '1s');
    my @got = map { fetch_at($_->[0], "/sale?user=$_->[1]&sku=b")->{sale} }
        [$a_port, 'x1'], [$b_port, 'x2'], [$a_port, 'x3'], [$b_port, 'x4'];
    is("@got", 'ADMITTED ADMITTED ADMITTED SOLD_OUT', 'ttl: b sells its 3');
    is(fetch_at($a_port, '/sale?user=y1&sku=a')->{sale}, 'ADMITTED', 'ttl: a sells too');
    is(show(hash_of("$p\{items}:items")), 'a=1,b=3', 'ttl: counted');
    sleep 2.3;
    is(fetch_at($b_port, '/sale?user=x4&sku=b')->{sale}, 'ADMITTED',
       'ttl: expired permits give b its slots back');
    is(show(hash_of("$p\{items}:items")), 'b=1', 'ttl: the expired permits are uncounted');
    is(show(hash_of("$p\{items}:buyers")), 'x4=1', 'ttl: and their buyers');
    is(fetch_at($a_port, '/sale?user=x1&sku=a')->{sale}, 'ADMITTED',
       'ttl: x1, whose permit expired, may buy another item');
    is(fetch_at($b_port, '/sale?user=x1&sku=b')->{sale}, 'LIMIT_REACHED', 'ttl: one at a time');
    stop_hosts();
}

# Revocation: a backend's release and the API free the item's slot.
{
    my $p = 'revoke:';
    start_hosts(prefix => $p, cache => '1s');
    my @got = map { fetch_at($_->[0], "/sale?user=$_->[1]&sku=b")->{sale} }
        [$a_port, 'z1'], [$b_port, 'z2'], [$a_port, 'z3'], [$b_port, 'z4'];
    is("@got", 'ADMITTED ADMITTED ADMITTED SOLD_OUT', 'revoke: b sells its 3');
    my $pay = fetch_at($a_port, '/pay?user=z1&sku=b');
    is($pay->{status}, 402, 'revoke: z1 pays on A, and the payment fails');
    my $deadline = time + 3;
    sleep 0.05 while (hash_of("$p\{items}:items")->{b} // 0) == 3 && time < $deadline;
    is(hash_of("$p\{items}:items")->{b}, 2, 'revoke: the release freed a slot of b in Redis');
    ok(!exists hash_of("$p\{items}:buyers")->{z1}, 'revoke: and z1 holds nothing');
    is(fetch_at($b_port, '/sale?user=z4&sku=b')->{sale}, 'ADMITTED', 'revoke: z4 takes it on B');
    is(fetch_at($a_port, '/sale?user=z5&sku=b')->{sale}, 'SOLD_OUT', 'revoke: b is sold out again');
    # The API addresses a permit of an item by its field in Redis (a zero byte, the item's
    # length, a colon, the item, the key), in base64 for the zero byte.
    my $field = MIME::Base64::encode_base64url("\x{0}1:bz2");
    my $api = fetch_at($b_port, "/api/zones/items/permits/$field?encoding=base64", 'DELETE');
    is($api->{status}, 200, 'revoke: z2 revoked through the API');
    is(hash_of("$p\{items}:items")->{b}, 2, 'revoke: b counts 2');
    is(fetch_at($a_port, '/sale?user=z5&sku=b')->{sale}, 'ADMITTED', 'revoke: z5 takes the slot');
    is(show(hash_of("$p\{items}:buyers")), 'z3=1,z4=1,z5=1', 'revoke: the buyers are exact');
    stop_hosts();
}

# The line: one place per buyer, whatever the item. At 2r/s, the first two are let in at once.
{
    my $p = 'line:';
    start_hosts(prefix => $p, queue => 'rate=2r/s idle=10s refresh=1s', cache => '1s');
    is(fetch_at($a_port, '/sale?user=w1&sku=d')->{sale}, 'ADMITTED', 'line: w1 let in at once');
    is(fetch_at($b_port, '/sale?user=w2&sku=e')->{sale}, 'ADMITTED', 'line: w2 too');
    my @got = map { fetch_at($_->[0], "/sale?user=$_->[1]&sku=$_->[2]")->{sale} }
        [$a_port, 'w3', 'd'], [$b_port, 'w4', 'd'], [$b_port, 'w3', 'e'], [$a_port, 'w4', 'f'];
    is("@got", 'QUEUED QUEUED QUEUED QUEUED', 'line: w3 and w4 wait, whatever they ask for');
    is(redis_cli('ZRANGE', "$p\{items}:line", 0, -1), "w3
w4
",
       'line: one place each, by buyer, in order');
    sleep 1.3;
    is(fetch_at($b_port, '/sale?user=w3&sku=e')->{sale}, 'ADMITTED', 'line: w3 called, for e');
    is(fetch_at($a_port, '/sale?user=w3&sku=d')->{sale}, 'LIMIT_REACHED',
       'line: and at his limit for d');
    is(fetch_at($a_port, '/sale?user=w4&sku=d')->{sale}, 'ADMITTED', 'line: w4 called, for d');
    is(show(hash_of("$p\{items}:items")), 'd=2,e=2', 'line: the items counted');
    is(redis_cli('ZCARD', "$p\{items}:line"), "0
", 'line: empty');
    stop_hosts();
}

# The pre-queue, per item: 40 buyers register for a and b on both hosts; at the start 5 win
# a and 3 win b, 8 different buyers.
{
    my $p = 'pre:';
    my $start = time + 4;
    start_hosts(prefix => $p, start => $start);
    my @paths = map { my $u = "pq$_"; map { "/sale?user=$u&sku=$_" } qw(a b) } 1 .. 40;
    my @before = crowd(paths => \@paths, connections => 8, ports => [$a_port, $b_port]);
    is(scalar(grep { $_->{sale} eq 'PREQUEUED' } @before), 80, 'prequeue: 80 registrations');
    is(redis_cli('SCARD', "$p\{items}:prequeue"), "80\n", 'prequeue: all of them in Redis');
    die 'registration ran past the start' if time >= $start;
    sleep $start - time + 0.1;
    is(fetch_at($a_port, '/sale?user=late&sku=a')->{sale}, 'SOLD_OUT',
       'prequeue: a late buyer finds a sold out');
    is(show(hash_of("$p\{items}:items")), 'a=5,b=3', 'prequeue: each item up to its stock');
    my $buyers = hash_of("$p\{items}:buyers");
    is(scalar keys %$buyers, 8, 'prequeue: 8 different winners');
    is(scalar(grep { $_ ne '1' } values %$buyers), 0, 'prequeue: one item each');
    my @results = crowd(paths => \@paths, connections => 8, ports => [$b_port, $a_port]);
    my %passed;
    $passed{ user($_->{path}) }++ for grep { $_->{sale} eq 'PERMITTED' } @results;
    is(join(',', sort keys %passed), join(',', sort keys %$buyers),
       'prequeue: the winners pass, and nobody else');
    is(scalar(grep { $_->{sale} eq 'ADMITTED' } @results), 0, 'prequeue: nobody admitted after');
    stop_hosts();
}

# on_error=open, Redis away (nothing listens on its port): the host's own zone, per item.
{
    start_hosts(prefix => 'open:', redis_port => $redis_port + 1, extra => 'on_error=open');
    is(fetch_at($a_port, '/sale?user=o1&sku=b')->{sale}, 'ADMITTED', 'open: o1 gets b on A');
    is(fetch_at($a_port, '/sale?user=o1&sku=a')->{sale}, 'LIMIT_REACHED',
       'open: and is at his limit on A');
    my @got = map { fetch_at($a_port, "/sale?user=o$_&sku=b")->{sale} } 2 .. 4;
    is("@got", 'ADMITTED ADMITTED SOLD_OUT', "open: b sells A's own 3");
    is(fetch_at($a_port, '/sale?user=o5&sku=c')->{sale}, 'SOLD_OUT', 'open: c none');
    is(fetch_at($a_port, '/sale?user=o5&sku=a')->{sale}, 'ADMITTED', 'open: a still sells');
    stop_hosts();
}

done_testing();
