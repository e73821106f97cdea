# The state file under operation (flash_sale_zone ... state=PATH):
# - it is private: 0600, owned by nginx's worker user, after start and after the master's
#   snapshot at stop;
# - a crowd churning through permits with a TTL does not make it grow without bound: workers
#   compact it while nginx runs, and a kill -9 and a start still bring back every permit;
# - a full disk: a buyer is told ADMITTED only once his permit is in the file; the others get
#   UNAVAILABLE, the error log says why once, the metrics count it, and admissions resume by
#   themselves when space returns; after a kill -9 and a start, every buyer told ADMITTED
#   passes with his number;
# - nginx's binary upgrade (USR2, WINCH, QUIT): both generations serve at once, no number is
#   given twice, and after a stop and a start every permit either generation granted is back;
# - a reload that points the zone at another state file: the new file gets every permit;
# - the file removed while nginx runs: written anew from the zone, nothing lost;
# - a directory nginx's user cannot write: nginx says the file cannot be compacted.

use strict;
use warnings;
use Test::More;
use Config;
use Cwd qw(cwd);
use File::Path qw(make_path remove_tree);
use POSIX ();
use Time::HiRes qw(sleep time);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch kill_nginx error_log);

my $port = crowd_port();
my $dir = cwd() . '/t/servroot-state-ops';
my $state = "$dir/sale.state";
my ($nobody_uid, $nogroup_gid) = (getpwnam('nobody'))[2, 3];

sub fresh_dir {
    system('umount', $dir) if -d $dir && `mount` =~ /\Q$dir\E/;
    remove_tree($dir);
    make_path($dir);
    chown $nobody_uid, $nogroup_gid, $dir;
}

sub config {
    my (%o) = @_;
    my $ttl = $o{ttl} ? "flash_sale_permit_ttl $o{ttl};" : '';
    my $cap = $o{cap} // 100000;
    my $path = $o{state} // $state;
    return <<"HTTP";
    flash_sale_zone \$arg_user zone=sale:8m state=$path;
    server {
        listen 127.0.0.1:$port;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Seq \$flash_sale_seq always;
        add_header X-Worker \$pid always;
        location /sale {
            flash_sale zone=sale;
            flash_sale_max_permits $cap;
            $ttl
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /keep {
            flash_sale zone=sale;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
        location /api/ { flash_sale_api; }
        location = /metrics { flash_sale_metrics; }
    }
HTTP
}

sub start {
    my (%o) = @_;
    start_nginx(workers => 2, user => 'nobody nogroup', log_level => 'notice',
                daemon => delete $o{daemon}, http => config(%o));
}

sub mode_of { my @st = stat $_[0]; return ($st[2] & 07777, $st[4]) }

# Every buyer's answer: { user => "SALE SEQ" }.
sub ask {
    my ($path, @users) = @_;
    my @res = crowd(paths => [map { "$path?user=$_" } @users], connections => 16);
    return { map { ($_->{path} =~ /user=([\w-]+)/)[0] => "$_->{sale} $_->{seq}" } @res };
}

# 1. Private files.
{
    fresh_dir();
    start();
    ask('/keep', map { "mode$_" } 1 .. 5);
    for my $file ($state, "$state.lock") {
        my ($mode, $uid) = mode_of($file);
        is(sprintf('%04o', $mode), '0600', "$file is 0600 while nginx runs");
        is($uid, $nobody_uid, "$file belongs to nginx's user");
    }
    stop_nginx();
    my ($mode, $uid) = mode_of($state);
    is(sprintf('%04o', $mode), '0600', 'still 0600 after the snapshot the master writes at stop');
    is($uid, $nobody_uid, "and still nginx's user's");
}

# 2. Churn: cap 1,000, TTL 1 s, a crowd until 8,000 admissions. Without compaction every
# admission would stay in the journal (about 70 bytes each: 560 KB).
{
    fresh_dir();
    start(cap => 1000, ttl => '1s');
    my ($n, $admitted, $largest, %numbers, $repeated) = (0, 0, 0);
    my $t0 = time;
    while ($admitted < 8000 && time - $t0 < 30) {
        my @res = crowd(paths => [map { '/sale?user=churn-' . $n++ } 1 .. 2000], connections => 32);
        for (grep { $_->{sale} eq 'ADMITTED' } @res) {
            $admitted++;
            $repeated++ if $numbers{ $_->{seq} }++;
        }
        my $size = -s $state;
        $largest = $size if $size > $largest;
    }
    ok($admitted >= 8000, sprintf('churn: %d admissions in %.1f s (about 70 bytes of journal each)',
                                  $admitted, time - $t0));
    ok(!$repeated, 'churn: no number given twice');
    ok($largest < 200_000, "churn: the journal never grew past $largest bytes");
    my $kept = ask('/keep', map { "kept$_" } 1 .. 20);
    ok(-s $state < 200_000, 'churn: nor after it (' . (-s $state) . ' bytes)');
    kill_nginx();
    start(cap => 1000, ttl => '1s');
    my $back = ask('/keep', map { "kept$_" } 1 .. 20);
    my @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $kept->{$_})[1] } keys %$kept;
    is(scalar @same, 20, 'churn: after kill -9 and a start, every permit is back with its number');
    like(error_log(), qr/restored \d+ permits/, 'churn: the restart read the compacted file');
    stop_nginx();
}

# 3. A full disk: the state file on a 512 KiB tmpfs, filled up but for a little room.
{
    fresh_dir();
    system('mount', '-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', $dir) == 0 or die "mount tmpfs: $?";
    chown $nobody_uid, $nogroup_gid, $dir;
    start();
    system("dd if=/dev/zero of=$dir/filler bs=1k count=2000 2>/dev/null");
    system("truncate -s -3k $dir/filler");    # room for about 40 records
    my $full = ask('/sale', map { "full$_" } 1 .. 300);
    my @admitted = grep { $full->{$_} =~ /^ADMITTED/ } keys %$full;
    my @unavailable = grep { $full->{$_} =~ /^UNAVAILABLE/ } keys %$full;
    ok(@admitted > 0 && @admitted < 200, scalar(@admitted) . ' buyers admitted while there was room');
    is(@admitted + @unavailable, 300, 'the others are told UNAVAILABLE (' . scalar(@unavailable) . ')');
    my @lines = error_log() =~ /(cannot write state file[^\n]*)/g;
    is(scalar @lines, 1, 'the error log says it once');
    like($lines[0] // '', qr/No space left on device/, 'with its real cause');
    my $metrics = fetch('/metrics')->{body};
    like($metrics, qr/^flash_sale_state_errors_total\{zone="sale"\} [1-9]\d*$/m, 'the metrics count it');
    like($metrics, qr/^flash_sale_state_up\{zone="sale"\} 0$/m, 'and say the file takes nothing');
    # The operator's changes are refused too, whole, rather than made here and lost at the
    # next start (one try a second: wait for the turn).
    sleep 1.1;
    my ($permits) = fetch('/api/zones/sale')->{body} =~ /"permits":(\d+)/;
    is(fetch('/api/zones/sale/permits', 'DELETE')->{status}, 503, 'full: clearing every permit is refused');
    my ($after) = fetch('/api/zones/sale')->{body} =~ /"permits":(\d+)/;
    is($after, $permits, "full: and every permit is still there ($permits)");
    unlink "$dir/filler";
    sleep 1.1;    # while the disk fails, one record a second is tried
    # The first buyer after that takes the try; a crowd at the same instant would race it
    # (the other worker refuses at once until the try has proved the disk back).
    like(ask('/sale', 'later0')->{later0}, qr/^ADMITTED/, 'space back: the first buyer after a second is admitted');
    my $later = ask('/sale', map { "later$_" } 1 .. 20);
    is(scalar(grep { /^ADMITTED/ } values %$later), 20, 'space back: then every buyer is admitted again');
    like(error_log(), qr/takes records again/, 'and the log says so');
    like(fetch('/metrics')->{body}, qr/^flash_sale_state_up\{zone="sale"\} 1$/m, 'metrics: up again');
    kill_nginx();
    start();
    my $back = ask('/sale', @admitted, @unavailable);
    my @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $full->{$_})[1] } @admitted;
    is(scalar @same, scalar @admitted, 'after kill -9 and a start, every buyer told ADMITTED passes with his number');
    is(scalar(grep { $back->{$_} =~ /^PERMITTED/ } @unavailable), 0, 'nobody told UNAVAILABLE holds a permit');
    stop_nginx();
    system('umount', $dir);
}

# 4. A binary upgrade, as Debian's `service nginx upgrade` does it: USR2 to the master (a new
# master and workers start beside the old ones), WINCH and QUIT to the old master.
{
    fresh_dir();
    # nginx runs as a daemon, as in production; as a child subreaper, this test reaps its
    # masters, the new one too once the old one has exited.
    my $prctl = $Config{archname} =~ /aarch64/ ? 167 : 157;
    syscall($prctl, 36, 1, 0, 0, 0) == 0 or die "PR_SET_CHILD_SUBREAPER: $!";
    start(daemon => 1);
    my %told = %{ ask('/keep', 'a', 'b') };
    my $old = FlashSale::Crowd::master_pid();
    kill 'USR2', $old;
    my $root = $FlashSale::Crowd::Root;
    my $deadline = time + 10;
    # The old master renames its pid file to .oldbin; the new one writes its own.
    sleep 0.05 until (-e "$root/logs/nginx.pid.oldbin" && -s "$root/logs/nginx.pid"
                      && FlashSale::Crowd::master_pid() != $old)
        || time > $deadline;
    my $new = FlashSale::Crowd::master_pid();
    isnt($new, $old, 'upgrade: a new master started');
    sleep 0.05 until FlashSale::Crowd::children($new) >= 2 || time > $deadline;
    my %generation = map { $_ => 'old' } FlashSale::Crowd::children($old);
    $generation{$_} = 'new' for FlashSale::Crowd::children($new);
    # Buyers one at a time, each on a connection of its own, until both generations served.
    my %served;
    my $n = 0;
    while (((($served{old} // 0) < 3 || ($served{new} // 0) < 3) || $n < 12) && $n < 1000) {
        my $user = 'up' . $n++;
        my $res = fetch("/keep?user=$user");
        $told{$user} = "$res->{sale} $res->{seq}";
        $served{ $generation{ $res->{worker} } // 'unknown' }++;
    }
    ok($served{old} && $served{new}, "upgrade: both generations admitted buyers at once (old $served{old}, new $served{new})");
    kill 'WINCH', $old;
    kill 'QUIT', $old;
    waitpid $old, 0;
    $FlashSale::Crowd::Pid = $new;
    my %after = %{ ask('/keep', map { "after$_" } 1 .. 5) };
    %told = (%told, %after);
    my @seqs = map { (split ' ', $_)[1] } values %told;
    my %count;
    $count{$_}++ for @seqs;
    is(scalar(grep { $count{$_} > 1 } keys %count), 0, 'upgrade: no number given twice (' . scalar(@seqs) . ' buyers)');
    is(scalar(grep { !/^ADMITTED/ } values %told), 0, 'upgrade: every buyer admitted once');
    stop_nginx();
    start(daemon => 1);
    my $back = ask('/keep', keys %told);
    my @lost = grep { $back->{$_} ne 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @lost, 0, 'upgrade: after a stop and a start every permit is back with its number')
        or diag(join ', ', map { "$_: told $told{$_}, now $back->{$_}" } @lost[0 .. ($#lost < 9 ? $#lost : 9)]);
    stop_nginx();
}

# 5. A reload that moves the state file: the zone keeps its permits, and so does the new file.
{
    fresh_dir();
    start();
    my %told = %{ ask('/keep', map { "moved$_" } 1 .. 5) };
    my $conf = "$FlashSale::Crowd::Root/conf/nginx.conf";
    my $text = do { local (@ARGV, $/) = ($conf); <> };
    $text =~ s/state=\Q$state\E/state=$dir\/moved.state/ or die "no state path in $conf";
    open my $fh, '>', $conf or die $!;
    print $fh $text;
    close $fh;
    my @old = FlashSale::Crowd::worker_pids();
    kill 'HUP', FlashSale::Crowd::master_pid();
    my $deadline = time + 10;
    sleep 0.05 while time < $deadline
        && grep { my $w = $_; grep { $_ == $w } FlashSale::Crowd::worker_pids() } @old;
    %told = (%told, %{ ask('/keep', map { "moved$_" } 6 .. 8) });
    stop_nginx();
    start(state => "$dir/moved.state");
    my $back = ask('/keep', keys %told);
    my @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @same, 8, 'moved: the permits granted before and after the reload are in the new file');
    stop_nginx();
}

# 6. The state file removed while nginx runs (by hand, or a cleaning script): the next record
# makes it anew from the zone, with a warning; removed with no record after it, the master
# writes it from the zone as it stops. No permit is lost either way.
{
    fresh_dir();
    start();
    my %told = %{ ask('/keep', map { "rm$_" } 1 .. 10) };
    unlink $state or die "unlink: $!";
    %told = (%told, %{ ask('/keep', map { "rm$_" } 11 .. 15) });
    like(error_log(), qr/state file "\Q$state\E" was removed, emptied or replaced while nginx ran; written anew from the zone/,
         'removed: the log says so');
    stop_nginx();
    start();
    my $back = ask('/keep', keys %told);
    my @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @same, 15, 'removed: after a stop and a start, every permit is back, before and after');
    unlink $state or die "unlink: $!";
    stop_nginx();
    start();
    $back = ask('/keep', keys %told);
    @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @same, 15, 'removed just before the stop: the master writes it from the zone');
    # `nginx -t` or `nginx -s quit` reads the configuration, which makes the file anew, empty,
    # before the master's last snapshot: that snapshot still holds the zone's permits.
    unlink $state or die "unlink: $!";
    my $root = $FlashSale::Crowd::Root;
    system($ENV{TEST_NGINX_BINARY} || 'nginx', '-q', '-t', '-p', "$root/", '-c', 'conf/nginx.conf') == 0
        or die 'nginx -t failed';
    ok(-e $state && !-s $state, 'nginx -t made the removed file anew, empty');
    stop_nginx();
    start();
    $back = ask('/keep', keys %told);
    @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @same, 15, 'made anew empty by nginx -t before the stop: every permit is back');
    # Replaced by something that is not a state file: moved aside, and the zone's permits kept.
    open my $junk, '>', $state or die $!;
    print $junk "garbage\n";
    close $junk;
    stop_nginx();
    ok(scalar(glob("$state.unusable-*")), 'replaced: the stranger file is moved aside');
    start();
    $back = ask('/keep', keys %told);
    @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @same, 15, 'replaced before the stop: every permit is back');
    # Replaced while nginx runs, then a record and a crash: the stranger file is moved aside
    # untouched, never written into, and the record goes to a file made anew from the zone.
    unlink $state or die "unlink: $!";
    open $junk, '>', $state or die $!;
    print $junk "stranger\n";
    close $junk;
    %told = (%told, %{ ask('/keep', 'rm-late') });
    like(error_log(), qr/state file "\Q$state\E" was replaced while nginx ran; kept the other file as/,
         'replaced while running: the log says where the other file is');
    my @strangers = grep { -s $_ == length "stranger\n" } glob("$state.unusable-*");
    ok(scalar @strangers, 'replaced while running: the stranger file is kept as it was');
    kill_nginx();
    start();
    $back = ask('/keep', keys %told);
    @same = grep { $back->{$_} eq 'PERMITTED ' . (split ' ', $told{$_})[1] } keys %told;
    is(scalar @same, 16, 'replaced while running, then kill -9: every permit is back');
    stop_nginx();
}

# 7. A state directory nginx's user cannot write (/var/lib/nginx on Debian is root's): workers
# cannot compact the file there. nginx starts, and says so.
{
    fresh_dir();
    chown 0, 0, $dir;
    chmod 0755, $dir;
    start();
    like(error_log(), qr/the directory of state file "\Q$state\E" is not writable by nginx's user/,
         'unwritable directory: the log says the file cannot be compacted');
    stop_nginx();
}

END { system('umount', $dir) if $dir && `mount` =~ /\Q$dir\E/ }

done_testing();
