# Drops with many items in one zone (`flash_sale_item`), under a crowd on two workers:
# - ten items with their stock from a `map`: 5,000 buyers spread over them, five rounds; each
#   item sells exactly its stock, one sold out from the start sells nothing and leaves the
#   others alone, and every winner passes again with the same permit, for that item only;
# - one per buyer (`flash_sale_max_per_buyer 1`): buyers racing for several items at once, on
#   both workers, get one each and LIMIT_REACHED for the rest; 2 per buyer likewise;
# - the token names the item, and a checkout that requires it refuses another item's;
# - an empty item is NO_ITEM; a stock that is not a number is refused (500) and logged;
# - per item too: the pre-queue's draw at the start (each item's stock to its registered
#   buyers, nobody past his limit), the line (one per sale), the TTL, the backend's release,
#   dry run, and the state file across a restart and a SIGKILL.
#
# This file drives nginx itself, with the helpers in t/lib/FlashSale/Crowd.pm.

use strict;
use warnings;
use Test::More;
use Cwd qw(cwd);
use File::Path qw(make_path remove_tree);
use POSIX qw(strftime);
use Time::HiRes qw(sleep time);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch error_log kill_nginx);

my $port = crowd_port();

# Ten items: item-1 .. item-9 with 1 to 9 pairs, item-0 sold out from the start (stock 0).
my %stock = map { ("item-$_" => $_) } 0 .. 9;
my $map = join '', map { "        $_ $stock{$_};\n" } sort keys %stock;

sub drop_config {
    my (%opt) = @_;
    my $per_buyer = $opt{per_buyer} ? "flash_sale_max_per_buyer $opt{per_buyer};" : '';
    my $ratio = $opt{ratio} // 0;
    return <<"HTTP";
    map \$arg_sku \$stock {
$map        bad-stock lots;
        default 0;
    }
    flash_sale_zone \$arg_user zone=drop:10m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Worker \$pid always;
        add_header X-Seq \$flash_sale_seq always;
        flash_sale_token_secret token.key;
        location /drop {
            flash_sale zone=drop;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            flash_sale_block_ratio $ratio;
            flash_sale_draw per_key;
            $per_buyer
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /token {
            flash_sale zone=drop;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            $per_buyer
            # add_header here replaces the server's: X-Sale again.
            add_header X-Sale \$flash_sale_status always;
            add_header X-Token \$flash_sale_token always;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /checkout {
            flash_sale_verify zone=drop token=\$arg_token item=\$arg_sku;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
    }
HTTP
}

my %files = ('token.key' => ('k' x 40) . "\n");

sub tally_by_item {
    my (@results) = @_;
    my %by;
    for my $r (@results) {
        my ($sku) = $r->{path} =~ /sku=([^&]+)/;
        $by{$sku}{ $r->{sale} }++;
    }
    return \%by;
}

# Ten items, 5,000 buyers, each asking for one item; two workers; five rounds with fresh zones.
for my $round (1 .. 5) {
    start_nginx(workers => 2, http => drop_config(ratio => 0.2), files => \%files);
    my @paths = map { my $i = $_ % 10; "/drop?user=r$round-b$_&sku=item-$i" } 1 .. 5000;
    my @first = crowd(paths => \@paths, connections => 64);
    is(scalar @first, 5000, "round $round: every buyer got an answer");
    my $by = tally_by_item(@first);
    my @exact = grep { ($by->{"item-$_"}{ADMITTED} // 0) == $_ } 0 .. 9;
    is(scalar @exact, 10, "round $round: each of the ten items sold exactly its stock")
        or diag explain { map { $_ => $by->{$_}{ADMITTED} // 0 } sort keys %$by };
    is(($by->{'item-0'}{SOLD_OUT} // 0), 500, "round $round: the sold-out item turned all away");
    # The draw comes after the cap: only the first ~11 buyers of each item draw (about 11
    # blocked in all); none blocked would mean nobody drew.
    my $blocked = 0;
    $blocked += $by->{$_}{BLOCKED} // 0 for keys %$by;
    ok($blocked > 0, "round $round: the draw turned some away ($blocked)");
    my %workers = map { $_->{worker} => 1 } @first;
    is(scalar keys %workers, 2, "round $round: both workers decided");
    my %winner = map { $_->{path} => $_->{seq} } grep { $_->{sale} eq 'ADMITTED' } @first;
    is(scalar keys %winner, 45, "round $round: 45 winners in all");

    my @again = crowd(paths => \@paths, connections => 64);
    my @passed = grep { $_->{status} == 200 } @again;
    is(scalar @passed, 45, "round $round: 45 pass on the second visit");
    is(scalar(grep { defined $winner{ $_->{path} } && $_->{sale} eq 'PERMITTED'
                     && $_->{seq} eq $winner{ $_->{path} } } @passed), 45,
       "round $round: the winners, PERMITTED with the number they won");
    # A winner asking for another item holds no permit for it: it is sold out by now.
    my @other = map { my $p = $_; $p =~ s/sku=item-(\d)/"sku=item-" . (($1 + 1) % 10)/e; $p }
                sort keys %winner;
    my @cross = crowd(paths => \@other, connections => 16);
    is(scalar(grep { $_->{status} == 200 } @cross), 0,
       "round $round: no winner passes for another item");
    stop_nginx();
}

# One per buyer: 300 buyers each ask for three items at once, on many connections (both
# workers), stock plenty: each gets exactly one, LIMIT_REACHED for the others.
for my $limit (1, 2) {
    start_nginx(workers => 2, http => drop_config(per_buyer => $limit), files => \%files);
    my @paths;
    for my $b (1 .. 300) {
        push @paths, map { "/drop?user=limit$limit-b$b&sku=item-$_" } 7, 8, 9;
    }
    # 7 + 8 + 9 = 24 pairs: fewer than the buyers, so some find every item sold out.
    my @results = crowd(paths => \@paths, connections => 64);
    my %held;
    for my $r (grep { $_->{sale} eq 'ADMITTED' } @results) {
        my ($user) = $r->{path} =~ /user=([^&]+)/;
        $held{$user}++;
    }
    my $by = tally_by_item(@results);
    is(scalar(grep { ($by->{"item-$_"}{ADMITTED} // 0) == $_ } 7, 8, 9), 3,
       "limit $limit: each item sold exactly its stock");
    is(scalar(grep { $_ > $limit } values %held), 0, "limit $limit: nobody holds more than $limit");
    my $limited = grep { $_->{sale} eq 'LIMIT_REACHED' } @results;
    ok($limited > 0, "limit $limit: buyers over the limit were told LIMIT_REACHED ($limited)");
    is(scalar(grep { $_->{sale} eq 'LIMIT_REACHED' && $_->{status} == 503 } @results), $limited,
       "limit $limit: LIMIT_REACHED is answered with the reject status");
    # The same buyers again: what they hold passes, the rest is still refused.
    my @again = crowd(paths => \@paths, connections => 64);
    is(scalar(grep { $_->{status} == 200 } @again), 24, "limit $limit: the 24 permits pass again");
    stop_nginx();
}

# The token names the item; the checkout requires the item of its own request.
start_nginx(workers => 1, http => drop_config(per_buyer => 2), files => \%files);
my $won = fetch('/token?user=amy&sku=item-5');
is($won->{sale}, 'ADMITTED', 'amy wins item-5') or diag explain $won;
my ($token) = $won->{headers} =~ /^X-Token: (\S+)/mi;
ok($token, 'with a token');
is(fetch("/checkout?user=amy&sku=item-5&token=$token")->{status}, 200,
   'the token buys item-5 at the checkout');
my $other = fetch("/checkout?user=amy&sku=item-6&token=$token");
is($other->{status}, 403, 'but not item-6');
like($other->{body}, qr/TOKEN_OTHER_ITEM/, 'told TOKEN_OTHER_ITEM');
is(fetch("/checkout?user=bob&sku=item-5&token=$token")->{status}, 403, "nor for bob");

# An empty item, an unknown one, a stock that is not a number.
my $none = fetch('/drop?user=amy');
is($none->{status}, 400, 'no item: 400');
is($none->{sale}, 'NO_ITEM', 'told NO_ITEM');
my $long = fetch('/drop?user=amy&sku=' . ('x' x 257));
is($long->{sale}, 'ITEM_TOO_LONG', 'an item of 257 bytes is ITEM_TOO_LONG');
is(fetch('/drop?user=amy&sku=unknown')->{sale}, 'SOLD_OUT', 'an item the map does not know: stock 0');
is(fetch('/drop?user=amy&sku=bad-stock')->{status}, 500, 'a stock that is not a number: 500');
like(error_log(), qr/"flash_sale_max_permits" is "lots" for item "bad-stock" in zone "drop", not a whole number of permits/,
     'and the error log says why');
stop_nginx();

# A sale of three items with the operational settings, each turned on by an option.
sub ops_config {
    my (%o) = @_;
    my $settings = join "\n", map { "            $_;" } @{ $o{settings} // [] };
    my $state = $o{state} ? " state=$o{state}" : '';
    return <<"HTTP";
    map \$arg_sku \$stock { a 2; b 3; c 1; default 0; }
    flash_sale_zone \$arg_user zone=ops:1m$state;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Worker \$pid always;
        add_header X-Seq \$flash_sale_seq always;
        add_header X-Position \$flash_sale_position always;
        location /drop {
            flash_sale zone=ops;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            flash_sale_max_per_buyer 1;
            flash_sale_release_header X-Flash-Sale-Release;
$settings
            proxy_pass http://127.0.0.1:$port/backend/\$arg_pay;
        }
        location = /metrics { flash_sale_metrics; }
        location /backend/ { return 200 "ok\\n"; }
        location /backend/failed {
            add_header X-Flash-Sale-Release "payment failed" always;
            return 402 "payment failed\\n";
        }
    }
HTTP
}

sub admitted_by_item {
    my %by;
    for my $r (grep { $_->{sale} eq 'ADMITTED' || $_->{sale} eq 'PERMITTED' } @_) {
        my ($sku) = $r->{path} =~ /sku=(\w+)/;
        my ($user) = $r->{path} =~ /user=([^&]+)/;
        $by{$sku}{$user} = 1;
    }
    return { map { $_ => scalar keys %{ $by{$_} } } keys %by };
}

sub at { strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($_[0])) }

# The pre-queue per item: 90 buyers register, 30 per item, 15 of them for two items; at the
# start each item's stock goes to its registered buyers, and nobody holds two.
{
    my $start = int(time) + 4;
    start_nginx(workers => 2, http => ops_config(settings => [
        'flash_sale_start ' . at($start), 'flash_sale_prequeue 1m']));
    my @register;
    for my $b (1 .. 90) {
        my $sku = (qw(a b c))[$b % 3];
        push @register, "/drop?user=pq$b&sku=$sku";
        push @register, "/drop?user=pq$b&sku=" . (qw(a b c))[($b + 1) % 3] if $b <= 15;
    }
    my @before = crowd(paths => \@register, connections => 16);
    is(scalar(grep { $_->{sale} eq 'PREQUEUED' } @before), 105, 'prequeue: 105 registrations');
    # Items the map does not know (stock 0) register nobody and take no memory.
    my @bogus = crowd(paths => [map { "/drop?user=bot&sku=bogus$_" } 1 .. 200], connections => 4);
    is(scalar(grep { $_->{sale} eq 'SOLD_OUT' } @bogus), 200,
       'prequeue: an item without stock is SOLD_OUT before the start, not registered');
    like(fetch('/metrics')->{body}, qr/^\Qflash_sale_prequeued{zone="ops"} 105\E$/m,
         'prequeue: still 105 registrations');
    sleep 0.1 while time < $start + 0.2;
    my @late = crowd(paths => [map { "/drop?user=late$_&sku=" . (qw(a b c))[$_ % 3] } 1 .. 30],
                     connections => 8);
    is(scalar(grep { $_->{status} == 200 } @late), 0,
       'prequeue: buyers who came after the start find every item drawn');
    my @after = crowd(paths => \@register, connections => 16);
    my $by = admitted_by_item(@after);
    is_deeply($by, { a => 2, b => 3, c => 1 }, "prequeue: each item's stock went to its registered buyers")
        or diag explain $by;
    my %held;
    for my $r (grep { $_->{status} == 200 } @after) {
        my ($user) = $r->{path} =~ /user=([^&]+)/;
        $held{$user}++;
    }
    is(scalar(grep { $_ > 1 } values %held), 0, 'prequeue: nobody holds two items');
    stop_nginx();
}

# A line (one per sale) with items: the caps and the limit stay exact; a buyer asking for two
# items at once has one place.
{
    start_nginx(workers => 2, http => ops_config(settings => [
        'flash_sale_queue rate=1r/s']));
    my $first = fetch('/drop?user=q0&sku=a');
    is($first->{sale}, 'ADMITTED', 'line: the first buyer is called in at once');
    my @paths = map { ("/drop?user=q$_&sku=a", "/drop?user=q$_&sku=b") } 1 .. 40;
    my @queued = crowd(paths => \@paths, connections => 8);
    my %positions;
    for my $r (grep { $_->{sale} eq 'QUEUED' } @queued) {
        my ($user) = $r->{path} =~ /user=([^&]+)/;
        $positions{$user}{ $r->{position} } = 1;
    }
    ok(scalar(keys %positions) > 20, 'line: buyers wait in line');
    # One line for the sale: a buyer who asks for c, an item nobody in line asked for, waits
    # behind the buyers of a and b (a line per item would put him first).
    my $late = fetch('/drop?user=late&sku=c');
    is($late->{sale}, 'QUEUED', 'line: a buyer of another item waits too');
    ok($late->{position} =~ /^\d+$/ && $late->{position} >= 20,
       "line: behind the others, one line per sale ($late->{position} ahead)");
    my $again = fetch('/drop?user=q40&sku=b');
    my $same = fetch('/drop?user=q40&sku=a');
    is($same->{sale}, 'QUEUED', 'line: q40 waits');
    ok(abs($same->{position} - $again->{position}) <= 1,
       'line: one place per buyer, whatever the item (one call between may move it by one)');
    my $deadline = time + 20;
    my @all;
    while (time < $deadline) {
        @all = crowd(paths => \@paths, connections => 8);
        last unless grep { $_->{sale} eq 'QUEUED' } @all;
        sleep 0.5;
    }
    my $by = admitted_by_item(@all, $first);
    is_deeply($by, { a => 2, b => 3 }, 'line: each item sold exactly its stock') or diag explain $by;
    my %held;
    $held{ ($_->{path} =~ /user=([^&]+)/)[0] }++ for grep { $_->{status} == 200 } @all, $first;
    is(scalar(grep { $_ > 1 } values %held), 0, 'line: nobody holds two items');
    stop_nginx();
}

# TTL, release and dry run, per item.
{
    start_nginx(workers => 2, http => ops_config(settings => ['flash_sale_permit_ttl 1s']));
    is(fetch('/drop?user=t1&sku=c')->{sale}, 'ADMITTED', 'ttl: t1 takes the one c');
    is(fetch('/drop?user=t2&sku=c')->{sale}, 'SOLD_OUT', 'ttl: c is sold out');
    is(fetch('/drop?user=t2&sku=a')->{sale}, 'ADMITTED', 'ttl: a is not');
    sleep 1.2;
    is(fetch('/drop?user=t3&sku=c')->{sale}, 'ADMITTED', "ttl: t1's permit expired, c sells again");
    is(fetch('/drop?user=t2&sku=b')->{sale}, 'ADMITTED',
       "ttl: t2's permit for a expired, his limit with it");
    is(fetch('/drop?user=t3&sku=c&pay=failed')->{status}, 402, 'release: the payment fails');
    is(fetch('/drop?user=t4&sku=c')->{sale}, 'ADMITTED', "release: c's slot went back");
    stop_nginx();

    start_nginx(workers => 1, http => ops_config(settings => ['flash_sale_dry_run on']));
    is(fetch('/drop?user=d1&sku=c')->{sale}, 'ADMITTED', 'dry run: d1 takes c');
    my $dry = fetch('/drop?user=d2&sku=c');
    is($dry->{sale}, 'SOLD_OUT_DRY_RUN', 'dry run: c is sold out, in dry run');
    is($dry->{status}, 200, 'dry run: and passes');
    is(fetch('/drop?user=d1&sku=a')->{sale}, 'LIMIT_REACHED_DRY_RUN', 'dry run: the limit too');
    is(fetch('/drop?user=d2&sku=a')->{sale}, 'ADMITTED', 'dry run: a still sells');
    stop_nginx();
}

# The state file keeps each permit's item: after a stop and a start, and after SIGKILL.
{
    my $dir = cwd() . '/t/servroot-items-state';
    remove_tree($dir);
    make_path($dir);
    my $config = ops_config(state => "$dir/ops.state");
    start_nginx(workers => 2, http => $config);
    my @won = crowd(paths => [map { "/drop?user=s$_&sku=" . (qw(a b c))[$_ % 3] } 1 .. 30],
                    connections => 8);
    my %winner = map { $_->{path} => $_->{seq} } grep { $_->{sale} eq 'ADMITTED' } @won;
    is(scalar keys %winner, 6, 'state: 6 winners');
    stop_nginx();
    # A buyer holding two items (a limit of 2 here): both come back.
    my $two = $config =~ s/flash_sale_max_per_buyer 1;/flash_sale_max_per_buyer 2;/r;
    $two =~ s/\{ a 2; b 3; c 1;/{ a 2; b 3; c 1; d 1; e 1;/;
    start_nginx(workers => 2, http => $two);
    for my $sku (qw(d e)) {
        my $r = fetch("/drop?user=both&sku=$sku");
        is($r->{sale}, 'ADMITTED', "state: both wins $sku");
        $winner{"/drop?user=both&sku=$sku"} = $r->{seq};
    }
    stop_nginx();
    $config = $two;
    for my $how ('a stop', 'SIGKILL') {
        start_nginx(workers => 2, http => $config);
        my @again = crowd(paths => [sort keys %winner], connections => 4);
        is(scalar(grep { $_->{sale} eq 'PERMITTED' && $_->{seq} eq $winner{ $_->{path} } } @again), 8,
           "state: after $how every winner passes with his number");
        my @cross = map { my $p = $_; $p =~ s/sku=(\w)/'sku=' . ($1 eq 'a' ? 'b' : 'a')/e; $p }
                    grep { !/user=both/ } sort keys %winner;
        is(scalar(grep { $_->{status} == 200 } crowd(paths => \@cross, connections => 4)), 0,
           "state: after $how nobody passes for another item");
        is(fetch('/drop?user=new&sku=b')->{sale}, 'SOLD_OUT', "state: after $how b is still sold out");
        if ($how eq 'a stop') { stop_nginx() } else { kill_nginx() }
    }
}

done_testing();
