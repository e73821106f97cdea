package FlashSale::Crowd;

# Helpers for tests that need a crowd: start nginx with a whole configuration of our own (in
# t/servroot-crowd, as a child process), and send many requests at once over many keepalive
# connections, each connection in a child process of its own.
#
# Environment: TEST_NGINX_BINARY, TEST_NGINX_LOAD_MODULES (as for Test::Nginx), and
# TEST_NGINX_CROWD_PORT (default 1986).

use strict;
use warnings;
use Cwd qw(cwd);
use File::Path qw(make_path remove_tree);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

use Exporter 'import';
our @EXPORT_OK = qw(start_nginx stop_nginx crowd crowd_port fetch worker_pids kill_nginx);

my $Root = cwd() . '/t/servroot-crowd';
my $Port = $ENV{TEST_NGINX_CROWD_PORT} || 1986;
my $Pid;

sub crowd_port { $Port }

# Starts nginx with `$http` inside its http block, on a fresh root (so fresh zones); `files`
# maps names under conf/ to their contents.
sub start_nginx {
    my (%opt) = @_;
    stop_nginx();
    remove_tree($Root);
    make_path("$Root/conf", "$Root/logs");
    for my $name (keys %{ $opt{files} // {} }) {
        open my $f, '>', "$Root/conf/$name" or die "$name: $!";
        print $f $opt{files}{$name};
        close $f;
    }
    my $modules = join '', map { "load_module $_;\n" }
        split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '';
    my $workers = $opt{workers} // 2;
    my $log_level = $opt{log_level} // 'warn';
    my $user = $> == 0 ? "user root;\n" : '';
    my $temp = join '', map { "    ${_}_temp_path $Root/${_}_temp;\n" }
        qw(client_body proxy fastcgi uwsgi scgi);
    open my $fh, '>', "$Root/conf/nginx.conf" or die $!;
    print $fh <<"CONF";
$modules${user}worker_processes $workers;
daemon off;
master_process on;
error_log logs/error.log $log_level;
pid logs/nginx.pid;
events { worker_connections 1024; accept_mutex off; }
http {
    access_log off;
$temp    $opt{http}
}
CONF
    close $fh;
    $Pid = fork // die "fork: $!";
    if ($Pid == 0) {
        open STDERR, '>', "$Root/logs/stderr.log";
        exec $ENV{TEST_NGINX_BINARY} || 'nginx', '-p', "$Root/", '-c', 'conf/nginx.conf';
        exit 127;
    }
    my $deadline = time + 10;
    while (time < $deadline) {
        if (waitpid($Pid, POSIX::WNOHANG()) == $Pid) {
            undef $Pid;
            die "nginx exited at startup: " . startup_error();
        }
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $Port, Timeout => 1);
        return if $s;
        sleep 0.02;
    }
    die "nginx did not listen on $Port";
}

sub startup_error { local (@ARGV, $/) = ("$Root/logs/stderr.log"); (<> // '') . error_log() }

sub stop_nginx {
    return unless $Pid;
    kill 'TERM', $Pid;
    waitpid $Pid, 0;
    undef $Pid;
}

sub error_log { open my $fh, '<', "$Root/logs/error.log" or return ''; local $/; <$fh> // '' }

# Sends GET for every path, spread over `connections` concurrent keepalive connections.
# Returns a list of { path, status, sale, worker, seq } from the status and the X-Sale,
# X-Worker and X-Seq headers of each response.
sub crowd {
    my (%opt) = @_;
    my @paths = @{ $opt{paths} };
    my $n = $opt{connections} // 64;
    my @kids;
    for my $k (0 .. $n - 1) {
        pipe(my $r, my $w) or die $!;
        my $pid = fork // die $!;
        if ($pid == 0) {
            close $r;
            my @mine = @paths[grep { $_ % $n == $k } 0 .. $#paths];
            print $w join('', map { "$_->{path} $_->{status} $_->{sale} $_->{worker} $_->{seq}\n" }
                run_connection(\@mine));
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }
    my @results;
    for my $kid (@kids) {
        my ($pid, $r) = @$kid;
        while (my $line = <$r>) {
            chomp $line;
            my ($path, $status, $sale, $worker, $seq) = split ' ', $line;
            push @results, { path => $path, status => $status, sale => $sale, worker => $worker,
                             seq => $seq };
        }
        waitpid $pid, 0;
    }
    return @results;
}

# One request (GET unless said, with extra header lines if given) on its own connection:
# { status, body, headers, ... }.
sub fetch {
    my ($path, $method, @headers) = @_;
    my ($res) = run_connection([$path], $method, \@headers);
    return $res;
}

sub master_pid {
    open my $fh, '<', "$Root/logs/nginx.pid" or die "no nginx.pid: $!";
    chomp(my $pid = <$fh>);
    return $pid;
}

# The master's children (the workers), from /proc.
sub worker_pids {
    my $master = master_pid();
    my @children;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $s, '<', $stat or next;
        my ($pid, $ppid) = (split ' ', scalar <$s>)[0, 3];
        push @children, $pid if $ppid == $master;
    }
    return @children;
}

# SIGKILL to the master and every worker at once, as a crash would do.
sub kill_nginx {
    kill 'KILL', master_pid(), worker_pids();
    waitpid $Pid, 0 if $Pid;
    undef $Pid;
    sleep 0.2;
}

# One connection, requests in sequence; reconnects when nginx closes it.
sub run_connection {
    my ($paths, $method, $headers) = @_;
    $method //= 'GET';
    my $extra = join '', map { "$_\r\n" } @{ $headers // [] };
    my @out;
    my $sock;
    my $buf = '';
    for my $path (@$paths) {
        for my $attempt (1 .. 3) {
            $sock ||= IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $Port)
                or die "connect: $!";
            print $sock "$method $path HTTP/1.1\r\nHost: localhost\r\n$extra\r\n";
            my $res = read_response($sock, \$buf);
            if ($res) {
                push @out, { path => $path, %$res };
                undef $sock if $res->{close};
                last;
            }
            undef $sock;
            $buf = '';
            die "no response for $path" if $attempt == 3;
        }
    }
    return @out;
}

sub read_response {
    my ($sock, $buf) = @_;
    while ($$buf !~ /\r\n\r\n/) {
        my $n = sysread $sock, $$buf, 65536, length $$buf;
        return undef unless $n;
    }
    my ($head) = $$buf =~ /^(.*?\r\n)\r\n/s;
    my ($status) = $head =~ m{^HTTP/1\.1 (\d+)};
    my ($length) = $head =~ /^Content-Length:\s*(\d+)/mi;
    my ($sale) = $head =~ /^X-Sale:\s*(\S+)/mi;
    my ($worker) = $head =~ /^X-Worker:\s*(\S+)/mi;
    my ($seq) = $head =~ /^X-Seq:\s*(\S+)/mi;
    my $close = $head =~ /^Connection:\s*close/mi;
    my $need = length($head) + 2 + ($length // 0);
    while (length $$buf < $need) {
        my $n = sysread $sock, $$buf, 65536, length $$buf;
        return undef unless $n;
    }
    my $res = { status => $status, sale => $sale // '-', worker => $worker // '-',
             seq => $seq // '-', close => $close, headers => $head,
             body => substr($$buf, length($head) + 2, $length // 0) };
    substr($$buf, 0, $need, '');
    return $res;
}

END { stop_nginx() }

1;
