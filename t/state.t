# flash_sale_zone ... state=PATH: permits (keys, numbers, expiry) and counters come back after a
# stop and a start, and after SIGKILL of the master and every worker; a torn last record, a
# damaged line or another zone's file never stops nginx, and what could be read is kept.

use strict;
use warnings;
use Test::More;
use Cwd qw(cwd);
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(sleep);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch kill_nginx);

my $port = crowd_port();
my $dir = cwd() . '/t/servroot-state';
my $state = "$dir/laptop.state";
remove_tree($dir);
make_path($dir);

sub config {
    my (%o) = @_;
    my $size = $o{size} // '1m';
    my $ttl = $o{ttl} ? "flash_sale_permit_ttl $o{ttl};" : '';
    return <<"HTTP";
    flash_sale_zone \$arg_user zone=laptop:$size state=$state;
    server {
        listen 127.0.0.1:$port;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Seq \$flash_sale_seq always;
        location /sale {
            flash_sale zone=laptop;
            flash_sale_max_permits 40;
            $ttl
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /api/ { flash_sale_api; }
        location = /metrics { flash_sale_metrics; }
    }
HTTP
}

sub seqs {
    my @res = crowd(paths => [map { "/sale?user=buyer$_" } @_], connections => 8);
    return { map { ($_->{path} =~ /user=(\w+)/)[0] => "$_->{sale} $_->{seq}" } @res };
}

sub read_file { local (@ARGV, $/) = @_; <> // '' }

# 1. Grants, a revocation, a clearing-free stop and start.
start_nginx(workers => 2, http => config());
my $first = seqs(1 .. 30);
is(scalar(grep { /^ADMITTED/ } values %$first), 30, "30 buyers admitted");
is(fetch('/api/zones/laptop/permits/buyer7')->{status}, 200, "buyer7 holds a permit");
is(fetch('/api/zones/laptop/permits/buyer7', 'DELETE')->{status}, 200, "buyer7's permit revoked");
stop_nginx();
like(read_file($state), qr/\Aflash-sale-state 1 /, "the master wrote a snapshot at stop");

start_nginx(workers => 2, http => config());
my $again = seqs(1 .. 30);
my @same = grep { $_ ne 'buyer7' && $again->{$_} eq 'PERMITTED ' . (split ' ', $first->{$_})[1] }
    keys %$first;
is(scalar @same, 29, "after stop and start, 29 permits are back with their numbers");
like($again->{buyer7}, qr/^ADMITTED 31$/, "the revoked buyer wins again, with a new number");
like(fetch('/metrics')->{body}, qr/^\Qflash_sale_requests_total{zone="laptop",status="ADMITTED"} 31\E$/m,
     "the counters came back too");

# 2. SIGKILL of everything: the journal alone brings the permits back.
my @next = map { "new$_" } 1 .. 5;
my $new = crowd(paths => [map { "/sale?user=$_" } @next], connections => 2);
kill_nginx();
start_nginx(workers => 2, http => config());
my $after_kill = seqs(1 .. 30);
is(scalar(grep { /^PERMITTED/ } values %$after_kill), 30, "after kill -9, the 30 permits are back");
my @new_again = crowd(paths => [map { "/sale?user=$_" } @next], connections => 2);
is(scalar(grep { $_->{sale} eq 'PERMITTED' } @new_again), 5,
   "and so are the 5 granted after the last snapshot");
is(fetch('/sale?user=late')->{seq}, 37, "numbers go on where they stopped");
stop_nginx();

# 3. A torn last record and a damaged line: skipped, said, the rest kept.
open my $fh, '>>', $state or die $!;
print $fh "G 999 1000 0 7a7a\nthis is not a record\nG 1000 1000 0 7a";
close $fh;
start_nginx(workers => 2, http => config(), log_level => 'notice');
my $log = FlashSale::Crowd::error_log();
like($log, qr/state file "[^"]+": skipped a torn last record of \d+ bytes/, "the torn record is logged");
like($log, qr/state file "[^"]+": skipped line \d+: not a record/, "the damaged line is logged");
like($log, qr/restored 37 permits from/, "every readable permit is restored");
my $zz = fetch('/sale?user=zz');
is("$zz->{sale} $zz->{seq}", 'PERMITTED 999', "the intact record before them is kept, number and all");
is(fetch('/api/zones/laptop/permits/newcomer')->{status}, 404, "nobody else got in");
like(fetch('/api/zones/laptop')->{body}, qr/"permits":37,/, "the zone holds exactly those 37 permits");
stop_nginx();

# 4. A bigger zone after a restart keeps the permits.
start_nginx(workers => 2, http => config(size => '2m'));
is(scalar(grep { /^PERMITTED/ } values %{ seqs(1 .. 30) }), 30, "a resized zone keeps the permits");
stop_nginx();

# 5. Another zone's file: nginx starts empty, says so, and keeps the file aside.
open $fh, '>', $state or die $!;
print $fh "flash-sale-state 1 70686f6e65 24636f6f6b69655f756964\nG 1 1000 0 61\n";
close $fh;
start_nginx(workers => 2, http => config());
$log = FlashSale::Crowd::error_log();
like($log, qr/skipped the whole file: it belongs to zone "phone" with the key "\$cookie_uid"/,
     "another zone's file is named");
my @aside = glob "$state.unusable-*";
is(scalar @aside, 1, "and kept aside");
like(read_file($aside[0]), qr/^G 1 1000 0 61$/m, "whole");
is(fetch('/sale?user=buyer1')->{sale}, 'ADMITTED', "nginx runs, with an empty zone");
stop_nginx();

# 6. A path that cannot be read: nginx starts and says why.
remove_tree($dir);
make_path("$state");   # a directory where the file should be
my $bad = eval { start_nginx(workers => 1, http => config()); 1 };
ok(!$bad, "a state path nginx cannot open for appending is a configuration error");
like(FlashSale::Crowd::startup_error(), qr/cannot open "state=\Q$state\E": Is a directory/,
     "which names the parameter and the reason");
remove_tree($dir);

done_testing();
