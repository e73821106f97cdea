# Across workers, exact: two workers, a crowd of 5,000 buyers over 64 connections, a cap of
# 100: exactly 100 ADMITTED, each of them passes again afterwards and nobody else does; five
# times with fresh zones; the winners' permit numbers are exactly 1..100, and the metrics count
# every decision. And the draw: at ratio 0.4, 10,000 new buyers are admitted 60% +- 3%.
#
# This file drives nginx itself (a crowd does not fit Test::Nginx's one-request-at-a-time
# format), with the helpers in t/lib/FlashSale/Crowd.pm.

use strict;
use warnings;
use Test::More;
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch);

my $port = crowd_port();

sub sale_config {
    my (%sale) = @_;
    my $cap = defined $sale{cap} ? "flash_sale_max_permits $sale{cap};" : '';
    return <<"HTTP";
    flash_sale_zone \$arg_user zone=sale:10m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Worker \$pid always;
        add_header X-Seq \$flash_sale_seq always;
        location = /metrics { flash_sale_metrics; }
        location /sale {
            flash_sale zone=sale;
            flash_sale_block_ratio $sale{ratio};
            $cap
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
    }
HTTP
}

sub tally {
    my %count;
    $count{ $_->{sale} }++ for @_;
    return \%count;
}

for my $round (1 .. 5) {
    start_nginx(workers => 2, http => sale_config(ratio => 0.5, cap => 100));
    my @buyers = map { "/sale?user=r$round-buyer$_" } 1 .. 5000;

    my @first = crowd(paths => \@buyers, connections => 64);
    my $count = tally(@first);
    is(scalar @first, 5000, "round $round: every buyer got an answer");
    is($count->{ADMITTED} // 0, 100, "round $round: exactly the cap is admitted");
    is(scalar(grep { $_->{status} == 200 } @first), 100, "round $round: exactly 100 pass");
    is(($count->{BLOCKED} // 0) + ($count->{SOLD_OUT} // 0), 4900,
       "round $round: everyone else is BLOCKED or SOLD_OUT");
    ok(($count->{BLOCKED} // 0) > 0 && ($count->{SOLD_OUT} // 0) > 0,
       "round $round: the draw turned some away before the cap did the rest");
    my %workers = map { $_->{worker} => 1 } @first;
    is(scalar keys %workers, 2, "round $round: both workers decided");

    my %winner = map { $_->{path} => $_->{seq} } grep { $_->{sale} eq 'ADMITTED' } @first;
    is(join(',', sort { $a <=> $b } values %winner), join(',', 1 .. 100),
       "round $round: the winners hold permits 1 to 100, no gap, no repeat");
    my @again = crowd(paths => \@buyers, connections => 64);
    my @passed = grep { $_->{status} == 200 } @again;
    is(scalar @passed, 100, "round $round: 100 pass on the second visit");
    is(scalar(grep { $winner{ $_->{path} } && $_->{sale} eq 'PERMITTED' } @passed), 100,
       "round $round: and they are the winners, PERMITTED");
    is(scalar(grep { $_->{seq} eq $winner{ $_->{path} } } @passed), 100,
       "round $round: each with the number it was admitted with");
    my $metrics = fetch('/metrics')->{body};
    my %counted = $metrics =~ /^flash_sale_requests_total\{zone="sale",status="(\w+)"\} (\d+)$/mg;
    is($counted{ADMITTED}, 100, "round $round: the metrics count 100 ADMITTED");
    is($counted{PERMITTED}, 100, "round $round: and 100 PERMITTED");
    is(($counted{BLOCKED} // 0) + ($counted{SOLD_OUT} // 0), 9800,
       "round $round: and every rejection of both visits");
    is(tally(@again)->{SOLD_OUT}, 4900, "round $round: everyone else is SOLD_OUT");
    stop_nginx();
}

{
    start_nginx(workers => 2, http => sale_config(ratio => 0.4));
    my @buyers = map { "/sale?user=draw$_" } 1 .. 10_000;
    my $count = tally(crowd(paths => \@buyers, connections => 64));
    my $share = ($count->{ADMITTED} // 0) / 10_000;
    diag(sprintf "ratio 0.4: %.2f%% of 10,000 new buyers admitted", 100 * $share);
    ok($share >= 0.57 && $share <= 0.63, "ratio 0.4 admits 60% +- 3% (got $share)");
    is(($count->{ADMITTED} // 0) + ($count->{BLOCKED} // 0), 10_000, "every buyer drew once");
    stop_nginx();
}

done_testing();
