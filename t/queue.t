# flash_sale_queue: a paced line, watched the way a sale runs it, with two workers.
# 1. A crowd of 300 waits and keeps asking for 22 s at 10r/s: admissions never run ahead of
#    the pace (one second's worth of burst), slots are not wasted, waiters come in in the
#    order they joined, and nobody's place goes up while he waits.
# 2. Half the line goes silent (idle=3s): the silent leave, their calls pass on, the line
#    moves on at the pace.
# 3. The cap rules: at the cap everyone waiting is told SOLD_OUT.
# 4. A reload keeps the line and every place in it.
# 5. With flash_sale_prequeue, the registered take the front in a random order, the late
#    after them.
# 6. A dry run lets waiters through, told QUEUED_DRY_RUN, with their places.
# 7. The admin API's PATCH changes the rate at once, without a burst.
# 8. Waiters who went silent do not let a burst through when they leave, and a full line says
#    UNAVAILABLE (the stock is there), logged once.
# 9. A restart with state=: the permits come back, the line starts empty, and waiters who come
#    back join it anew in the order they come back.

use strict;
use warnings;
use Test::More;
use POSIX qw(strftime);
use Time::HiRes qw(time sleep);
use File::Path qw(make_path remove_tree);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch fetch_at reload_nginx send_body);

my $port = crowd_port();

sub config {
    my ($queue, $extra) = @_;
    $extra //= '';
    return <<"HTTP";
    flash_sale_zone \$arg_user zone=sale:16m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Seq \$flash_sale_seq always;
        add_header X-Position \$flash_sale_position always;
        add_header X-Wait \$flash_sale_wait always;
        add_header X-Worker \$pid always;
        location /sale {
            flash_sale zone=sale;
            flash_sale_queue $queue;
            $extra
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "shop\\n"; }
        location /api/ { flash_sale_api; }
        location = /metrics { flash_sale_metrics; }
    }
HTTP
}

sub user_of { ($_[0]{path} =~ /user=([\w-]+)/)[0] }

# Joins `@users` one after the other, on one connection: their order is the line's.
sub join_in_order {
    my @users = @_;
    return crowd(paths => [map { "/sale?user=$_" } @users], connections => 1);
}

# Everyone not in yet asks every `$every` s until `$until`; returns
# { admitted => { user => [round, time] }, seen => { user => [[position, wait, retry], ...] },
#   rounds => [[time, admitted so far], ...], other => { user => sale } }.
sub keep_asking {
    my (%o) = @_;
    my ($t0, @waiting) = ($o{t0}, @{ $o{users} });
    my (%admitted, %seen, @rounds, %other);
    my $round = 0;
    while (@waiting && time < $o{until}) {
        my $started = time;
        $round++;
        my @res = crowd(paths => [map { "/sale?user=$_" } @waiting], connections => 16);
        my $done = time - $t0;
        my %still;
        for my $r (@res) {
            my $u = user_of($r);
            if ($r->{sale} eq 'ADMITTED') {
                $admitted{$u} = [$round, $done];
            } elsif ($r->{sale} eq 'QUEUED') {
                push @{ $seen{$u} }, [$r->{position}, $r->{wait}, $r->{retry}];
                $still{$u} = 1;
            } else {
                $other{$u} = $r->{sale};
                $still{$u} = 1 if $o{keep_others};
            }
        }
        push @rounds, [$done, scalar keys %admitted];
        @waiting = grep { $still{$_} } @waiting;
        my $rest = $o{every} - (time - $started);
        sleep $rest if $rest > 0;
    }
    return { admitted => \%admitted, seen => \%seen, rounds => \@rounds, other => \%other };
}

# 1. The pace, the order and the places.
{
    start_nginx(workers => 2, http => config('rate=10r/s idle=1m refresh=20s'));
    my @users = map { "w$_" } 1 .. 300;
    my $t0 = time;
    my @joined = join_in_order(@users);
    my $at_join = grep { $_->{sale} eq 'ADMITTED' } @joined;
    ok($at_join >= 10 && $at_join <= 12, "the first second's worth come in at once ($at_join)");
    my @first = grep { $_->{sale} eq 'QUEUED' } @joined;
    is(scalar @first, 300 - $at_join, 'the others are told QUEUED');
    is(scalar(grep { $_->{status} == 503 } @first), scalar @first, 'with the reject status');
    my $in_order = 1;
    for my $i (1 .. $#first) {
        $in_order = 0 if $first[$i]{position} < $first[$i - 1]{position};
    }
    ok($in_order, 'places at joining follow the order of arrival');

    my $run = keep_asking(t0 => $t0, users => [map { user_of($_) } @first], every => 0.2,
                          until => $t0 + 22);
    my $end = $run->{rounds}[-1][0];
    $run->{admitted}{ user_of($_) } = [0, 0] for grep { $_->{sale} eq 'ADMITTED' } @joined;
    my $total = keys %{ $run->{admitted} };
    my @ahead = grep { $_->[1] + $at_join > 10 * $_->[0] + 10 + 1 } @{ $run->{rounds} };
    is(scalar @ahead, 0, 'admissions never run ahead of 10 a second plus one second\'s worth');
    diag(sprintf "%d admitted in %.1f s: %s", $total, $end,
         join ' ', map { sprintf '%.0fs:%d', $_->[0], $_->[1] + $at_join }
             @{ $run->{rounds} }[grep { $_ % 10 == 9 } 0 .. $#{ $run->{rounds} }]);
    ok($end >= 20, sprintf 'the crowd asked for %.1f s', $end);
    ok($total >= 10 * $end - 10, "no slot wasted: $total admitted in ${\ int $end} s");
    my ($bad_order, $went_up, $bad_wait, $bad_retry) = (0, 0, 0, 0);
    my %index = map { $users[$_] => $_ } 0 .. $#users;
    my @in = sort { $index{$a} <=> $index{$b} } keys %{ $run->{admitted} };
    for my $i (1 .. $#in) {
        $bad_order++ if $run->{admitted}{ $in[$i] }[0] < $run->{admitted}{ $in[$i - 1] }[0];
    }
    for my $u (keys %{ $run->{admitted} }) {
        # Everyone who joined before an admitted buyer is admitted too, by then or earlier.
        $bad_order++ if grep { !$run->{admitted}{$_} } @users[0 .. $index{$u} - 1];
    }
    for my $u (keys %{ $run->{seen} }) {
        my @s = @{ $run->{seen}{$u} };
        for my $i (0 .. $#s) {
            my ($position, $wait, $retry) = @{ $s[$i] };
            $went_up++ if $i > 0 && $position > $s[$i - 1][0];
            $bad_wait++ unless $wait >= 1 && $wait == int(($position + 1 + 9) / 10);
            my $base = $wait < 20 ? $wait : 20;
            $bad_retry++ unless $retry >= 1 && $retry <= int($base * 1.2 + 0.5)
                                && $retry >= int($base * 0.8 + 0.5);
        }
    }
    is($bad_order, 0, 'first come, first served: nobody in before a waiter who joined earlier');
    is($went_up, 0, 'no waiter\'s place ever went up');
    is($bad_wait, 0, '$flash_sale_wait is the place over the pace, rounded up');
    is($bad_retry, 0, 'Retry-After is the wait (at most refresh), spread by a fifth');
    my $zone = fetch('/api/zones/sale')->{body};
    like($zone, qr/"queue":\{"admitted":\d+,"admitted_last_minute":\d+,"left":0,"serving":(\d+|null),"waiting":\d+\}/,
         'the API shows the line');
    my $metrics = fetch('/metrics')->{body};
    my ($waiting) = $metrics =~ /^flash_sale_queue_waiting\{zone="sale"\} (\d+)$/m;
    is($waiting, 300 - $total, 'the metrics count who still waits');
    like($metrics, qr/^flash_sale_queue_admitted_total\{zone="sale"\} $total$/m,
         'and who came in from the line');
    like($metrics, qr/^flash_sale_queue_wait_seconds_count\{zone="sale"\} $total$/m,
         'and how long they waited');
    like($metrics, qr/^flash_sale_requests_total\{zone="sale",status="QUEUED"\} [1-9]\d*$/m,
         'QUEUED is an outcome of its own');
    stop_nginx();
}

# 2. Half the line goes silent.
{
    start_nginx(workers => 2, http => config('rate=10r/s idle=3s refresh=1s'));
    my @users = map { "h$_" } 1 .. 200;
    my $t0 = time;
    my @joined = join_in_order(@users);
    my @even = map { user_of($_) } grep { $_->{sale} eq 'QUEUED' && user_of($_) =~ /[02468]$/ } @joined;
    my $run = keep_asking(t0 => $t0, users => \@even, every => 0.3, until => $t0 + 16);
    my $in = keys %{ $run->{admitted} };
    is($in, scalar @even, "every waiter who kept asking came in ($in of ${\ scalar @even})");
    my $end = $run->{rounds}[-1][0];
    ok($end < 14, sprintf 'in %.1f s: the silent half did not hold the line up', $end);
    my @ahead = grep { $_->[1] > 10 * $_->[0] + 10 + 1 } @{ $run->{rounds} };
    is(scalar @ahead, 0, 'and the pace held');
    my ($left) = fetch('/metrics')->{body} =~ /^flash_sale_queue_left_total\{zone="sale"\} (\d+)$/m;
    ok($left >= 85, "the silent waiters left the line ($left)");
    stop_nginx();
}

# 3. The cap.
{
    start_nginx(workers => 2, http => config('rate=10r/s', 'flash_sale_max_permits 30;'));
    my @users = map { "c$_" } 1 .. 100;
    my $t0 = time;
    my @joined = join_in_order(@users);
    my $run = keep_asking(t0 => $t0, users => [map { user_of($_) } grep { $_->{sale} eq 'QUEUED' } @joined],
                          every => 0.2, until => $t0 + 10);
    my $admitted = (grep { $_->{sale} eq 'ADMITTED' } @joined) + keys %{ $run->{admitted} };
    is($admitted, 30, 'exactly the cap came in');
    my $waited = grep { $_->{sale} eq 'QUEUED' } @joined;
    ok($waited >= 80, "a line formed ($waited waited)");
    my $sold_out = grep { $_ eq 'SOLD_OUT' } values %{ $run->{other} };
    is($sold_out, 70, 'everyone else waiting was told SOLD_OUT');
    my @again = crowd(paths => [map { "/sale?user=$_" } keys %{ $run->{other} }], connections => 8);
    is(scalar(grep { $_->{sale} ne 'SOLD_OUT' } @again), 0, 'and stays told');
    stop_nginx();
}

# 4. A reload keeps the line.
{
    my $hport = $port + 1;
    (my $conf = config('rate=1r/s idle=1m')) =~ s/listen 127\.0\.0\.1:$port;/listen 127.0.0.1:$hport;/;
    start_nginx(host => 'line', port => $hport, workers => 2, http => $conf);
    my @users = map { "r$_" } 1 .. 50;
    my @before = map { fetch_at($hport, "/sale?user=$_") } @users;
    my %place = map { user_of($_) => $_->{position} } grep { $_->{sale} eq 'QUEUED' } @before;
    reload_nginx('line');
    my @after = map { fetch_at($hport, "/sale?user=$_") } grep { defined $place{$_} } @users;
    my @kept = grep { $_->{sale} eq 'ADMITTED' || ($_->{sale} eq 'QUEUED' && $_->{position} <= $place{ user_of($_) }) } @after;
    is(scalar @kept, scalar @after, 'after a reload every waiter keeps his place (or is in)');
    my @positions = map { $_->{position} } grep { $_->{sale} eq 'QUEUED' } @after;
    is(join(',', @positions), join(',', sort { $a <=> $b } @positions), 'in the same order');
    is(fetch_at($hport, '/sale?user=newcomer')->{position}, scalar(@positions),
       'a newcomer joins behind them');
    stop_nginx('line');
}

# 5. The pre-queue takes the front of the line, in a random order.
{
    my $start = time + 2.5;
    my $at = strftime('%Y-%m-%dT%H:%M:%S', gmtime int $start) . sprintf('.%03dZ', ($start - int $start) * 1000);
    start_nginx(workers => 2, http => config('rate=1r/s idle=1m',
        "flash_sale_start $at; flash_sale_prequeue 1h;"));
    my @early = map { "e$_" } 1 .. 40;
    my @registered = join_in_order(@early);
    is(scalar(grep { $_->{sale} eq 'PREQUEUED' } @registered), 40, 'before the start: PREQUEUED');
    sleep(($start - time + 0.1) > 0 ? $start - time + 0.1 : 0);
    my @late = join_in_order(map { "l$_" } 1 .. 10);
    my @early_after = join_in_order(@early);
    my %pos = map { user_of($_) => $_->{position} } grep { $_->{sale} eq 'QUEUED' } @late, @early_after;
    my ($front_max) = sort { $b <=> $a } map { $pos{$_} } grep { defined $pos{$_} } @early;
    my ($late_min) = sort { $a <=> $b } map { $pos{$_} } grep { defined $pos{$_} } map { "l$_" } 1 .. 10;
    ok($front_max < $late_min, "the registered are all ahead of the late ($front_max < $late_min)");
    my @order = sort { $pos{$a} <=> $pos{$b} } grep { defined $pos{$_} } @early;
    isnt(join(',', @order), join(',', grep { defined $pos{$_} } @early),
         'in an order of their own, not the order they registered in');
    stop_nginx();
}

# 6. A dry run.
{
    start_nginx(workers => 1, http => config('rate=1r/s', 'flash_sale_dry_run on;'));
    my @res = join_in_order(map { "d$_" } 1 .. 5);
    is(join(' ', map { $_->{status} } @res), '200 200 200 200 200', 'a dry run lets everyone through');
    is(join(' ', map { $_->{sale} } @res), 'ADMITTED QUEUED_DRY_RUN QUEUED_DRY_RUN QUEUED_DRY_RUN QUEUED_DRY_RUN',
       'and says who would have waited');
    is(join(' ', map { $_->{position} } @res), '- 0 1 2 3', 'with their places');
    stop_nginx();
}

# 7. PATCH queue_rate.
{
    start_nginx(workers => 2, http => config('rate=2r/s idle=1m'));
    my @users = map { "p$_" } 1 .. 300;
    my $t0 = time;
    my @joined = join_in_order(@users);
    my @waiting = map { user_of($_) } grep { $_->{sale} eq 'QUEUED' } @joined;
    my $count = sub { scalar keys %{ $_[0]{admitted} } };
    my $slow = keep_asking(t0 => $t0, users => \@waiting, every => 0.2, until => $t0 + 3);
    my $before = $count->($slow);
    ok($before <= 2 * 3 + 1, "at 2r/s: $before in 3 s");
    my $patched = send_body($port, 'PATCH', '/api/zones/sale', '{"queue_rate": "20r/s"}');
    like($patched->{body}, qr/"queue_rate":"20r\/s"/, 'PATCH sets the rate');
    my $t1 = time;
    @waiting = grep { !$slow->{admitted}{$_} } @waiting;
    my $fast = keep_asking(t0 => $t1, users => \@waiting, every => 0.2, until => $t1 + 3);
    my @ahead = grep { $_->[1] > 20 * $_->[0] + 20 + 1 } @{ $fast->{rounds} };
    is(scalar @ahead, 0, 'at once at 20r/s, no faster');
    ok($count->($fast) >= 20 * 3 - 10, 'and as fast (' . $count->($fast) . ' in 3 s)');
    send_body($port, 'PATCH', '/api/zones/sale', '{"queue_rate": "1r/s"}');
    my $t2 = time;
    @waiting = grep { !$fast->{admitted}{$_} } @waiting;
    my $down = keep_asking(t0 => $t2, users => \@waiting, every => 0.2, until => $t2 + 3);
    # Waiters called at 20r/s before the change may come in after it: up to a poll's worth.
    ok($count->($down) <= 1 * 3 + 1 + 20 * 0.2 + 1,
       'slowed down to 1r/s without a burst (' . $count->($down) . ' in 3 s)');
    like(fetch('/api/zones/sale')->{body}, qr/"queue_rate":"1r\/s"/, 'the API shows the rate');
    stop_nginx();
}

# 8. Ghosts, then real buyers: never more than the pace and one second's worth in a second.
{
    start_nginx(workers => 2, http => config('rate=5r/s idle=3s refresh=1s'));
    join_in_order(map { "ghost$_" } 1 .. 200);
    sleep 4.5;
    my $t0 = time;
    my @real = map { "real$_" } 1 .. 60;
    my $run = keep_asking(t0 => $t0, users => \@real, every => 0.25, until => $t0 + 7);
    my %per_second;
    $per_second{ int $_->[1] }++ for values %{ $run->{admitted} };
    my ($most) = sort { $b <=> $a } values %per_second;
    ok($most <= 5 + 5 + 1, "the ghosts left no burst behind: at most $most in a second");
    my $in = keys %{ $run->{admitted} };
    ok($in >= 5 * 6 - 5, "and the pace went on for the real buyers ($in in 7 s)");
    stop_nginx();

    (my $tiny = config('rate=1r/m')) =~ s/zone=sale:16m/zone=sale:64k/;
    start_nginx(workers => 1, http => $tiny);
    my @res = join_in_order(map { "many$_" } 1 .. 2000);
    my %told;
    $told{ $_->{sale} }++ for @res;
    ok($told{QUEUED} > 50 && $told{UNAVAILABLE} > 50,
       "a full line: QUEUED while there was room ($told{QUEUED}), then UNAVAILABLE ($told{UNAVAILABLE})");
    ok(!$told{SOLD_OUT}, 'not SOLD_OUT: the stock is there');
    my @lines = FlashSale::Crowd::error_log() =~ /(the waiting line has no room[^\n]*)/g;
    is(scalar @lines, 1, 'the log says so once');
    stop_nginx();
}

# 9. A restart.
{
    # A fresh directory: the suite may run again (scripts/matrix), and the file would keep the
    # last run's permits.
    my $dir = "$FlashSale::Crowd::Root-state";
    remove_tree($dir);
    make_path($dir);
    my $state = "$dir/sale.state";
    (my $conf = config('rate=1r/m idle=1h')) =~ s/zone=sale:16m;/zone=sale:16m state=$state;/;
    start_nginx(workers => 2, http => $conf);
    my @before = join_in_order(map { "s$_" } 1 .. 6);
    is(join(' ', map { $_->{sale} } @before), 'ADMITTED QUEUED QUEUED QUEUED QUEUED QUEUED',
       'restart: one in, five waiting');
    stop_nginx();
    start_nginx(workers => 2, http => $conf);
    my @after = join_in_order(map { "s$_" } 1, 6, 5, 4, 3, 2);
    is($after[0]{sale}, 'PERMITTED', 'after a restart the permit is back');
    is(join(' ', map { "$_->{sale}:$_->{position}" } @after[1 .. 5]),
       'ADMITTED:- QUEUED:0 QUEUED:1 QUEUED:2 QUEUED:3',
       'the line started empty: the waiters joined anew in the order they came back');
    stop_nginx();
}

done_testing();
