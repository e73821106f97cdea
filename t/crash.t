# A worker killed with SIGKILL in the middle of a burst: the master respawns it, the zone's
# lock is not left held (nginx's master releases a dead worker's ngx_shmtx), nothing hangs, and
# the cap stays exact: exactly 100 permits, numbered without a repeat.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch worker_pids);

my $port = crowd_port();

for my $round (1 .. 3) {
    start_nginx(workers => 2, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=sale:10m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Seq \$flash_sale_seq always;
        location /sale {
            flash_sale zone=sale;
            flash_sale_block_ratio 0.5;
            flash_sale_max_permits 100;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /api/ { flash_sale_api; }
    }
HTTP
    my @before = worker_pids();
    is(scalar @before, 2, "round $round: two workers");

    # The crowd runs in a child; the parent kills a worker while it is under way.
    my $pid = fork // die $!;
    if ($pid == 0) {
        my @buyers = map { "/sale?user=r$round-crash$_" } 1 .. 4000;
        eval { crowd(paths => \@buyers, connections => 32) };
        POSIX::_exit(0);
    }
    sleep 0.15;
    kill 'KILL', $before[0];
    waitpid $pid, 0;

    # Everyone, again, on fresh connections: every request is answered, so nothing hangs.
    my @buyers = map { "/sale?user=r$round-crash$_" } 1 .. 4000;
    my @again = crowd(paths => \@buyers, connections => 32);
    is(scalar @again, 4000, "round $round: after the kill every buyer is answered");
    my @after = worker_pids();
    is(scalar @after, 2, "round $round: the master replaced the killed worker");
    ok(!grep({ $_ == $before[0] } @after), "round $round: the killed worker is gone");

    my @permits;
    my $after = '';
    while (1) {
        my $page = fetch("/api/zones/sale/permits?limit=1000$after")->{body};
        my @seqs = $page =~ /"seq":(\d+)/g;
        push @permits, @seqs;
        my ($next) = $page =~ /"next":"([^"]+)"/;
        last if !$next || !@seqs;
        $after = "&after=$next";
    }
    is(scalar @permits, 100, "round $round: exactly the cap holds permits");
    my %seen;
    $seen{$_}++ for @permits;
    is(scalar keys %seen, 100, "round $round: no permit number repeats");
    is(scalar(grep { $_->{status} == 200 } @again), 100,
       "round $round: the 100 holders pass, nobody else");
    stop_nginx();
    like(FlashSale::Crowd::error_log(), qr/exited on signal 9/, "round $round: the kill was seen");
}

done_testing();
