# flash_sale_prequeue: buyers who arrive in the last minutes before the start are registered;
# at the start the cap's worth of permits goes to a uniform choice among them, before anyone
# arriving later is looked at. Four sales, 1,000 registered buyers each, cap 100.

use strict;
use warnings;
use Test::More;
use POSIX qw(strftime);
use Time::HiRes qw(time sleep);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch);

my $port = crowd_port();
my ($rounds, $buyers, $cap) = (4, 1000, 100);

sub rfc3339 {
    my ($t) = @_;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime int $t) . sprintf('.%03dZ', ($t - int $t) * 1000);
}

my (@decile, %by_worker, $first_after_start_won);
for my $round (1 .. $rounds) {
    my $start = time + 2.5;
    start_nginx(workers => 2, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=drop:10m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Seq \$flash_sale_seq always;
        add_header X-Worker \$pid always;
        location /drop {
            flash_sale zone=drop;
            flash_sale_start ${\ rfc3339($start)};
            flash_sale_prequeue 1h;
            flash_sale_block_ratio 0.5;
            flash_sale_max_permits $cap;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /metrics { flash_sale_metrics; }
    }
HTTP
    # Everyone registers, some twice; the registration order is known from the list.
    my @order = map { "b$_" } 1 .. $buyers;
    my @before = crowd(paths => [map { "/drop?user=$_" } @order, @order[0 .. 99]],
                       connections => 16);
    die "round $round: registration ran past the start" if time >= $start;
    my %registered_by = map { ($_->{path} =~ /user=(\w+)/)[0] => $_->{worker} } @before;
    my $prequeued = grep { $_->{status} == 503 && $_->{sale} eq 'PREQUEUED' } @before;
    is($prequeued, $buyers + 100, "round $round: every request before the start is PREQUEUED");
    like(fetch('/metrics')->{body}, qr/^flash_sale_prequeued\{zone="drop"\} $buyers$/m,
         "round $round: $buyers buyers wait, repeats counted once");

    sleep $start - time + 0.05;
    # After the start: newcomers first, then the registered in reverse order.
    my @late = map { "late$_" } 1 .. 50;
    my @after = crowd(paths => [map { "/drop?user=$_" } @late, reverse @order], connections => 16);
    my %sale = map { ($_->{path} =~ /user=(\w+)/)[0] => $_ } @after;
    is((grep { $sale{$_}{sale} ne 'SOLD_OUT' } @late), 0,
       "round $round: nobody arriving after the start gets in");
    my @won = grep { $sale{$_}{sale} eq 'PERMITTED' } @order;
    is(scalar @won, $cap, "round $round: exactly the cap's worth of the pre-queued hold permits");
    is(join(',', sort { $a <=> $b } map { $sale{$_}{seq} } @won), join(',', 1 .. $cap),
       "round $round: numbered 1 to $cap");
    is((grep { $sale{$_}{sale} !~ /^(PERMITTED|SOLD_OUT)$/ } @order), 0,
       "round $round: the others find it sold out");
    like(fetch('/metrics')->{body}, qr/^flash_sale_prequeued\{zone="drop"\} 0$/m,
         "round $round: the pre-queue is drawn and emptied");

    my %position = map { $order[$_] => $_ } 0 .. $#order;
    $decile[int($position{$_} * 10 / $buyers)]++ for @won;
    my ($first_worker) = sort values %registered_by;
    for my $buyer (@order) {
        my $w = $registered_by{$buyer} eq $first_worker ? 'A' : 'B';
        $by_worker{$w}{registered}++;
        $by_worker{$w}{won}++ if $sale{$buyer}{sale} eq 'PERMITTED';
    }
    # The buyers who asked first after the start (the end of the order) have no edge.
    $first_after_start_won += grep { $sale{$_}{sale} eq 'PERMITTED' } @order[-100 .. -1];
    stop_nginx();
}

my $won = $rounds * $cap;
my $expected = $won / 10;
my $chi2 = 0;
$chi2 += (($_ // 0) - $expected)**2 / $expected for @decile[0 .. 9];
diag("winners per tenth of the registration order: @{[map { $_ // 0 } @decile[0 .. 9]]}; "
     . sprintf('chi-square %.1f', $chi2));
# 27.9 is the 99.9th percentile of chi-square with 9 degrees of freedom.
cmp_ok($chi2, '<', 27.9, 'winners are spread evenly over the registration order');
# 10% of the winners expected from each tenth; 3 standard deviations is 18.
cmp_ok(abs(($decile[0] // 0) - $expected), '<=', 18,
       "the first tenth to register won $decile[0] of $won permits, not more than its share");
cmp_ok(abs($first_after_start_won - $expected), '<=', 18,
       "the first tenth to ask after the start won $first_after_start_won of $won permits");

# Buyers registered through either worker win at the same rate (a two-proportion z-test).
my ($a, $b) = @by_worker{qw(A B)};
ok($a && $b, 'both workers registered buyers') or BAIL_OUT('one worker took every connection');
my ($pa, $pb) = map { ($_->{won} // 0) / $_->{registered} } $a, $b;
my $p = $won / ($rounds * $buyers);
my $z = ($pa - $pb) / sqrt($p * (1 - $p) * (1 / $a->{registered} + 1 / $b->{registered}));
diag(sprintf 'win rate by registering worker: %.1f%% of %d, %.1f%% of %d (z = %.2f)',
     100 * $pa, $a->{registered}, 100 * $pb, $b->{registered}, $z);
cmp_ok(abs $z, '<', 3.5, 'the worker a buyer registered through makes no difference');

done_testing();
