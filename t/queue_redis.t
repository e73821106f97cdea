# The waiting line (flash_sale_queue) and the pre-queue (flash_sale_prequeue) across hosts:
# two nginx instances (2 workers each) keep one sale in one Redis.
# - One line: a crowd of waiters split across both hosts polls; half of them go silent
#   (idle=3s) and the line moves on. One numbering (no ticket twice), admissions in ticket
#   order among live waiters, the pace over both hosts for more than 20 s (never above rate x
#   elapsed + one second's worth, not far below while waiters remain), every waiter's
#   $flash_sale_position never goes up, far fewer round trips than requests, and a reload of
#   one host in the middle keeps the line.
# - The cap: once reached, everyone waiting is told SOLD_OUT.
# - The pre-queue: registrants of both hosts are shuffled together at the opening, at the
#   front of the line, later buyers behind them; without a line, the cap's worth of permits
#   goes to registrants of both hosts, whom both hosts let through.
# - Redis away while waiters wait: a waiter keeps the place he was shown, a new buyer gets
#   UNAVAILABLE, nobody a 500.
#
# Needs redis-server (Debian's redis-server package, installed by scripts/install-deps).

use strict;
use warnings;
use Test::More;
use POSIX ();
use IO::Handle;
use Time::HiRes qw(sleep time);
use POSIX qw(strftime);
use FlashSale::Crowd
    qw(start_nginx stop_nginx crowd crowd_port fetch_at start_redis stop_redis redis_cli
       reload_nginx);

# Ports of their own: t/redis.t's hosts are crowd_port and the next one.
my $a_port = crowd_port() + 2;
my $b_port = crowd_port() + 3;
my $redis_port = crowd_port() - 40;
start_redis(port => $redis_port, fresh => 1);

sub rfc3339 {
    my ($t) = @_;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime int $t) . sprintf('.%03dZ', ($t - int $t) * 1000);
}

sub start_hosts {
    my (%opt) = @_;
    my $queue = $opt{queue} ? "flash_sale_queue $opt{queue};" : '';
    my $start = $opt{start} ? "flash_sale_start ${\ rfc3339($opt{start})}; flash_sale_prequeue 1h;" : '';
    for ([a => $a_port], [b => $b_port]) {
        my ($name, $port) = @$_;
        start_nginx(host => $name, port => $port, workers => 2, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=line:10m;
    flash_sale_redis zone=line server=127.0.0.1:$redis_port prefix=$opt{prefix} timeout=1s cache=1s;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Seq \$flash_sale_seq always;
        add_header X-Position \$flash_sale_position always;
        location /sale {
            flash_sale zone=line;
            flash_sale_max_permits $opt{cap};
            $queue
            $start
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /api/ { flash_sale_api; }
        location /metrics { flash_sale_metrics; }
    }
HTTP
    }
}

sub metric {
    my ($port, $name) = @_;
    my $body = fetch_at($port, '/metrics')->{body};
    return $body =~ /^$name\{zone="line"\} (\d+)$/m ? $1 : 0;
}

sub requests_counted {
    my ($port) = @_;
    my $body = fetch_at($port, '/metrics')->{body};
    my $n = 0;
    $n += $1 while $body =~ /^flash_sale_requests_total\{zone="line",status="[A-Z_]+"\} (\d+)$/mg;
    return $n;
}

# Waiters: [key, port, silent]. Each child process runs a share of them: every waiter asks
# every `poll` seconds until he is ADMITTED or SOLD_OUT (a silent one stops after his first
# answer), until `until`. Returns one event per answer: { t, key, port, status, sale, seq,
# position }.
sub waiters {
    my (%opt) = @_;
    my @all = @{ $opt{waiters} };
    my $n = $opt{children} // 12;
    my @kids;
    for my $k (0 .. $n - 1) {
        pipe(my $r, my $w) or die $!;
        my $pid = fork // die $!;
        if ($pid == 0) {
            close $r;
            $w->autoflush(1);
            my @mine = map { { key => $_->[0], port => $_->[1], silent => $_->[2], next => 0 } }
                @all[grep { $_ % $n == $k } 0 .. $#all];
            while (time < $opt{until} && grep { !$_->{done} } @mine) {
                for my $me (grep { !$_->{done} && $_->{next} <= time } @mine) {
                    my $res = eval { fetch_at($me->{port}, "/sale?user=$me->{key}") }
                        // { status => 0, sale => 'NONE', seq => '-', headers => '' };
                    my ($position) = ($res->{headers} // '') =~ /^X-Position:\s*(\d+)/mi;
                    printf $w "%.3f %s %d %d %s %s %s\n", time, $me->{key}, $me->{port},
                        $res->{status}, $res->{sale}, $res->{seq}, $position // '-';
                    $me->{done} = 1 if $me->{silent} || $res->{sale} =~ /^(ADMITTED|SOLD_OUT)$/;
                    $me->{next} = time + $opt{poll} * (0.8 + rand 0.4);
                }
                sleep 0.02;
            }
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }
    $opt{meanwhile}->() if $opt{meanwhile};
    my @events;
    for my $kid (@kids) {
        my ($pid, $r) = @$kid;
        while (my $line = <$r>) {
            my ($t, $key, $port, $status, $sale, $seq, $position) = split ' ', $line;
            push @events, { t => $t, key => $key, port => $port, status => $status,
                            sale => $sale, seq => $seq, position => $position };
        }
        waitpid $pid, 0;
    }
    return sort { $a->{t} <=> $b->{t} } @events;
}

sub line_tickets {
    my ($prefix) = @_;
    my %ticket = split /\n/, redis_cli('ZRANGE', "$prefix\{line}:line", 0, -1, 'WITHSCORES');
    return \%ticket;
}

# One line over both hosts, 5 a second: 240 waiters, every other one silent after his first
# answer, host A reloaded in the middle.
{
    my ($rate, $idle) = (5, 3);
    start_hosts(prefix => 'line:', cap => 10000, queue => "rate=${rate}r/s idle=${idle}s refresh=1s");
    # Every other waiter of each host goes silent after his first answer.
    my @waiters = map { ["w$_", $_ % 2 ? $a_port : $b_port, $_ % 4 < 2 ? 1 : 0] } 1 .. 240;
    my %silent = map { $_->[0] => $_->[2] } @waiters;
    my $t0 = time;
    my ($tickets, $reloaded);
    my @events = waiters(waiters => \@waiters, poll => 0.5, until => $t0 + 50, meanwhile => sub {
        sleep 1.5;
        $tickets = line_tickets('line:');
        sleep 8 - (time - $t0);
        reload_nginx('a');
        $reloaded = time;
    });
    my $requests = @events;
    my %by_key;
    push @{ $by_key{ $_->{key} } }, $_ for @events;
    is((grep { $_->{status} == 500 || $_->{status} == 0 } @events), 0, 'line: no 500, every request answered');
    my %admitted_at = map { $_->{key} => $_->{t} } grep { $_->{sale} eq 'ADMITTED' } @events;
    my @live = grep { !$silent{$_} } keys %by_key;
    is(scalar(grep { $admitted_at{$_} } @live), scalar @live, 'line: every live waiter is admitted ('
       . scalar(@live) . ')');
    my @seqs = sort { $a <=> $b } map { $_->{seq} } grep { $_->{sale} eq 'ADMITTED' } @events;
    my %seen_seq;
    is((grep { $seen_seq{$_}++ } @seqs), 0, 'line: no permit number twice');

    # One numbering: the tickets Redis gave, over both hosts.
    my %seen_ticket;
    my @ticket_values = values %$tickets;
    ok(@ticket_values > 150, 'line: ' . scalar(@ticket_values) . ' waiters in line after 1.5 s');
    is((grep { $seen_ticket{$_}++ } @ticket_values), 0, 'line: no ticket twice across both hosts');
    my %hosts_in_line;
    $hosts_in_line{ $_->[1] }++ for grep { exists $tickets->{ $_->[0] } } @waiters;
    is(scalar keys %hosts_in_line, 2, 'line: waiters of both hosts in the one line');

    # Order: among live waiters, an earlier ticket is never admitted later than a later one,
    # beyond a poll interval and the host's cache (idle/2).
    my @ordered = sort { $tickets->{$a} <=> $tickets->{$b} }
        grep { exists $tickets->{$_} && $admitted_at{$_} } @live;
    my $inversions = 0;
    my $latest = 0;
    for my $key (@ordered) {
        $inversions++ if $admitted_at{$key} + 2.5 < $latest;
        $latest = $admitted_at{$key} if $admitted_at{$key} > $latest;
    }
    is($inversions, 0, 'line: live waiters are admitted in ticket order (' . scalar(@ordered) . ' checked)');

    # The pace, over both hosts: admissions since the opening never above rate x elapsed + one
    # second's worth, and not far below while live waiters remain.
    my @times = sort { $a <=> $b } values %admitted_at;
    my $start = $events[0]{t};
    my ($over, $under) = (0, 0);
    my $last = $times[-1];
    for my $i (0 .. $#times) {
        my $elapsed = $times[$i] - $start;
        my $allowed = $rate * $elapsed + $rate + 1;
        $over = $i + 1 - $allowed if $i + 1 - $allowed > $over;
    }
    for (my $t = $start + $idle + 2; $t < $last - 1; $t += 0.5) {
        my $done = grep { $_ <= $t } @times;
        my $due = $rate * ($t - $start);
        $under = $due - $done if $due - $done > $under;
    }
    my $span = $last - $start;
    ok($span > 20, sprintf('line: the pace ran for %.1f s', $span));
    is($over, 0, 'line: admissions never above rate x elapsed + one second');
    ok($under < 3 * $rate, sprintf('line: at most %.1f admissions behind the pace while waiters remain', $under));
    my $measured = (@times - $rate) / ($last - $start);
    diag sprintf('line: %d admitted in %.1f s: %.2f a second after the first second\'s burst (rate %d)',
                 scalar @times, $span, $measured, $rate);
    ok($measured > 0.85 * $rate && $measured < 1.1 * $rate, 'line: the measured pace is the rate');

    # What each waiter was shown never went up, across both hosts' workers and the reload.
    my $up = 0;
    for my $key (keys %by_key) {
        my $shown;
        for my $e (grep { $_->{sale} eq 'QUEUED' } @{ $by_key{$key} }) {
            $up++ if defined $shown && $e->{position} > $shown;
            $shown = $e->{position};
        }
    }
    is($up, 0, 'line: no waiter saw his position go up');
    my $after_reload = grep { $_->{t} > $reloaded && $_->{port} == $a_port && $_->{sale} eq 'ADMITTED' } @events;
    ok($after_reload > 10, "line: host A admits waiters after its reload ($after_reload)");
    my $rejoined = grep {
        my $key = $_;
        my @q = grep { $_->{sale} eq 'QUEUED' } @{ $by_key{$key} };
        my ($before) = grep { $_->{t} < $reloaded } reverse @q;
        my ($after) = grep { $_->{t} > $reloaded } @q;
        $before && $after && $after->{position} > $before->{position};
    } keys %by_key;
    is($rejoined, 0, 'line: the reload kept every place');

    # Round trips: far fewer than requests.
    sleep 1.2;
    metric($a_port, 'flash_sale_queue_waiting');
    sleep 1.1;
    my $calls = metric($a_port, 'flash_sale_redis_calls_total') + metric($b_port, 'flash_sale_redis_calls_total');
    my $counted = requests_counted($a_port) + requests_counted($b_port);
    diag sprintf('line: %d requests, %d round trips to Redis: %.2f per request', $counted, $calls,
                 $calls / $counted);
    ok($calls < 0.6 * $counted, 'line: fewer round trips than requests');
    is(metric($b_port, 'flash_sale_queue_admitted_total'), scalar @times,
       'line: the metrics show the admissions of both hosts, from Redis');
    like(fetch_at($a_port, '/api/zones/line')->{body}, qr/"queue":\{[^}]*"admitted":${\ scalar @times}/,
         'line: and so does the API');
    ok(metric($a_port, 'flash_sale_queue_left_total') >= 100, 'line: the silent waiters left');
    stop_nginx($_) for qw(a b);
}

# The cap: 30 permits, a line of 100 at 20 a second; once the cap is reached, everyone
# waiting is told SOLD_OUT.
{
    start_hosts(prefix => 'cap:', cap => 30, queue => 'rate=20r/s idle=4s refresh=1s');
    my @waiters = map { ["c$_", $_ % 2 ? $a_port : $b_port, 0] } 1 .. 100;
    my @events = waiters(waiters => \@waiters, poll => 0.3, until => time + 15);
    my @admitted = grep { $_->{sale} eq 'ADMITTED' } @events;
    is(scalar @admitted, 30, 'cap: exactly the cap is admitted from the line');
    my $capped = $admitted[-1]{t};
    my %last;
    $last{ $_->{key} } = $_ for @events;
    is((grep { $_->{sale} !~ /^(ADMITTED|SOLD_OUT)$/ } values %last), 0,
       'cap: every waiter ends ADMITTED or SOLD_OUT');
    my $late = grep { $_->{sale} eq 'QUEUED' && $_->{t} > $capped + 3 } @events;
    is($late, 0, 'cap: nobody is told QUEUED past the cap (after the hosts hear it)');
    stop_nginx($_) for qw(a b);
}

# The pre-queue with a line: registrants of both hosts are shuffled together at the front.
{
    my $start = time + 4;
    start_hosts(prefix => 'pre:', cap => 10000, queue => 'rate=20r/s idle=5s refresh=1s',
                start => $start);
    my @registrants = map { ["p$_", $_ % 2 ? $a_port : $b_port] } 1 .. 60;
    my @before = crowd(paths => [map { "/sale?user=$_->[0]" } @registrants[grep { $_ % 2 == 0 } 0 .. 59]],
                       connections => 8, ports => [$a_port]);
    push @before, crowd(paths => [map { "/sale?user=$_->[0]" } @registrants[grep { $_ % 2 } 0 .. 59]],
                        connections => 8, ports => [$b_port]);
    is((grep { $_->{sale} eq 'PREQUEUED' } @before), 60, 'prequeue: every registrant is PREQUEUED');
    is(redis_cli('SCARD', 'pre:{line}:prequeue'), "60\n", 'prequeue: registered in Redis');
    # The figures are read from Redis at most once a second, when asked for.
    metric($a_port, 'flash_sale_prequeued');
    sleep 1.05;
    metric($a_port, 'flash_sale_prequeued');
    sleep 0.1;
    is(metric($a_port, 'flash_sale_prequeued'), 60,
       'prequeue: the metrics show the registrations in Redis');
    die 'registration ran past the start' if time >= $start;
    sleep $start - time + 0.1;
    my @late = crowd(paths => [map { "/sale?user=late$_" } 1 .. 20], connections => 4,
                     ports => [$a_port, $b_port]);
    my $tickets = line_tickets('pre:');
    my @front = sort { $tickets->{$a} <=> $tickets->{$b} } grep { /^p/ } keys %$tickets;
    my @behind = grep { /^late/ } keys %$tickets;
    my ($last_front) = map { $tickets->{$_} } $front[-1];
    is(scalar @front, 60, 'prequeue: every registrant has a place');
    is((grep { $tickets->{$_} < $last_front } @behind), 0, 'prequeue: later buyers are behind them');
    my %host_of = map { $_->[0] => $_->[1] } @registrants;
    my $a_front = grep { $host_of{$_} == $a_port } @front[0 .. 29];
    ok($a_front >= 7 && $a_front <= 23, "prequeue: both hosts' registrants spread over the front ($a_front of A's in the first 30)");
    my @order = map { ($_ =~ /(\d+)/)[0] } @front;
    my $ascending = grep { $order[$_] > $order[$_ - 1] } 1 .. $#order;
    ok($ascending > 15 && $ascending < 45, "prequeue: not in registration order ($ascending rises of 59)");
    my @events = waiters(waiters => [map { [$_->[0], $_->[1], 0] } @registrants], poll => 0.3,
                         until => time + 8);
    my %admitted = map { $_->{key} => 1 } grep { $_->{sale} eq 'ADMITTED' } @events;
    is(scalar keys %admitted, 60, 'prequeue: every registrant comes in through the line');
    is((grep { $_->{status} >= 500 && $_->{sale} ne 'QUEUED' } @events), 0, 'prequeue: no error');
    stop_nginx($_) for qw(a b);
}

# The pre-queue without a line: the cap's permits go to registrants of both hosts, and both
# hosts let every winner through.
{
    my $start = time + 2.5;
    start_hosts(prefix => 'drop:', cap => 10, start => $start);
    my @registrants = map { ["d$_", $_ % 2 ? $a_port : $b_port] } 1 .. 40;
    for my $r (@registrants) {
        is(fetch_at($r->[1], "/sale?user=$r->[0]")->{sale}, 'PREQUEUED', "drop: $r->[0] registered")
            if $r->[0] eq 'd1';
        fetch_at($r->[1], "/sale?user=$r->[0]");
    }
    sleep $start - time + 0.1;
    my @late = crowd(paths => [map { "/sale?user=late$_" } 1 .. 20], connections => 4,
                     ports => [$a_port, $b_port]);
    is((grep { $_->{sale} eq 'SOLD_OUT' } @late), 20, 'drop: buyers after the start find it sold out');
    my (%winners, %passes);
    for my $r (@registrants) {
        for my $port ($a_port, $b_port) {
            my $res = fetch_at($port, "/sale?user=$r->[0]");
            if ($res->{sale} eq 'PERMITTED') {
                $winners{ $r->[0] } = $r->[1];
                $passes{ $r->[0] }++;
            }
        }
    }
    is(scalar keys %winners, 10, 'drop: exactly the cap of registrants won');
    is((grep { $_ != 2 } values %passes), 0, 'drop: both hosts let every winner through');
    my %hosts = map { $_ => 1 } values %winners;
    is(scalar keys %hosts, 2, "drop: winners registered through both hosts");
    stop_nginx($_) for qw(a b);
}

# Redis away while waiters wait: a waiter keeps the place he was shown, a new buyer gets
# UNAVAILABLE; nobody a 500.
{
    start_hosts(prefix => 'down:', cap => 1000, queue => 'rate=1r/s idle=30s refresh=1s');
    fetch_at($a_port, "/sale?user=first");
    my $queued = fetch_at($a_port, '/sale?user=x1');
    my ($before) = $queued->{headers} =~ /^X-Position:\s*(\d+)/mi;
    is($queued->{sale}, 'QUEUED', 'down: x1 waits');
    stop_redis('KILL');
    my @answers = map { fetch_at($a_port, '/sale?user=x1') } 1 .. 3;
    is((grep { $_->{sale} eq 'QUEUED' } @answers), 3, 'down: x1 is still QUEUED');
    my ($after) = $answers[-1]{headers} =~ /^X-Position:\s*(\d+)/mi;
    ok(defined $after && $after <= $before, 'down: at no later place');
    my $new = fetch_at($a_port, '/sale?user=newcomer');
    is($new->{sale}, 'UNAVAILABLE', 'down: a new buyer is told UNAVAILABLE');
    is($new->{status}, 503, 'down: with the reject status, not a 500');
    stop_nginx($_) for qw(a b);
}

done_testing();
