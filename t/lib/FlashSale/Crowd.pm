package FlashSale::Crowd;

# Helpers for tests that need a crowd: start nginx with a whole configuration of our own (in
# t/servroot-crowd, as a child process), and send many requests at once over many keepalive
# connections, each connection in a child process of its own. Several nginx "hosts" can run
# at once (`host => NAME`, each in t/servroot-crowd-NAME on a port of its own), and a Redis
# server for them (`start_redis`).
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
our @EXPORT_OK = qw(start_nginx stop_nginx crowd crowd_port fetch fetch_at send_body worker_pids kill_nginx
                    error_log start_redis stop_redis redis_cli reload_nginx);

my $Base = cwd() . '/t/servroot-crowd';
our $Root = $Base;
our $Port = $ENV{TEST_NGINX_CROWD_PORT} || 1986;
our $Pid;
# Hosts started with `host => NAME`: their pids and roots.
my %Hosts;

sub crowd_port { $Port }

# Starts nginx with `$http` inside its http block, on a fresh root (so fresh zones); `files`
# maps names under conf/ to their contents.
sub start_nginx {
    my (%opt) = @_;
    if (defined $opt{host}) {
        my $name = delete $opt{host};
        stop_nginx($name);
        local $Root = "$Base-$name";
        local $Pid;
        my $port = delete $opt{port} // die "a host needs a port";
        start_nginx(%opt, wait_port => $port);
        $Hosts{$name} = { pid => $Pid, root => $Root };
        return;
    }
    stop_nginx() unless $opt{wait_port};
    my $wait_port = $opt{wait_port} // $Port;
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
    # Directives of the main context, e.g. `thread_pool`.
    my $main = $opt{main} // '';
    # `user` as the configuration would say it (e.g. "nobody nogroup"); root when we are root.
    my $user = $opt{user} ? "user $opt{user};\n" : $> == 0 ? "user root;\n" : '';
    my $temp = join '', map { "    ${_}_temp_path $Root/${_}_temp;\n" }
        qw(client_body proxy fastcgi uwsgi scgi);
    open my $fh, '>', "$Root/conf/nginx.conf" or die $!;
        # `daemon => 1`: nginx daemonizes, as in production (nginx's binary upgrade needs it: a
    # master whose parent is the process that started it takes itself for the new binary).
    # The caller must be a child subreaper (prctl PR_SET_CHILD_SUBREAPER) to reap it.
    my $daemon = $opt{daemon} ? 'on' : 'off';
    print $fh <<"CONF";
$modules${user}worker_processes $workers;
$main
daemon $daemon;
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
    if ($opt{daemon}) {
        waitpid($Pid, 0);
        die "nginx exited at startup: " . startup_error() if $?;
        sleep 0.02 until -s "$Root/logs/nginx.pid" || time > $deadline;
        die "nginx wrote no pid file: " . startup_error() unless -s "$Root/logs/nginx.pid";
        $Pid = master_pid();
    }
    while (time < $deadline) {
        if (waitpid($Pid, POSIX::WNOHANG()) == $Pid) {
            undef $Pid;
            die "nginx exited at startup: " . startup_error();
        }
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $wait_port,
                                      Timeout => 1);
        return if $s;
        sleep 0.02;
    }
    die "nginx did not listen on $wait_port";
}

sub startup_error { local (@ARGV, $/) = ("$Root/logs/stderr.log"); (<> // '') . error_log() }

# Stops the host of that name, or the default one.
sub stop_nginx {
    my ($name) = @_;
    if (defined $name) {
        my $host = delete $Hosts{$name} or return;
        kill 'TERM', $host->{pid};
        waitpid $host->{pid}, 0;
        return;
    }
    return unless $Pid;
    kill 'TERM', $Pid;
    waitpid $Pid, 0;
    undef $Pid;
}

# `nginx -s reload` for the host of that name: SIGHUP to its master; waits until the old
# workers are gone and new ones serve.
sub reload_nginx {
    my ($name) = @_;
    my $host = $Hosts{$name} or die "no host $name";
    my @old = children($host->{pid});
    kill 'HUP', $host->{pid};
    my $deadline = time + 10;
    while (time < $deadline) {
        my %now = map { $_ => 1 } children($host->{pid});
        return if !grep({ $now{$_} } @old) && keys %now;
        sleep 0.05;
    }
    die "host $name did not reload";
}

sub children {
    my ($parent) = @_;
    my @children;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $s, '<', $stat or next;
        my ($pid, $ppid) = (split ' ', scalar <$s>)[0, 3];
        push @children, $pid if $ppid == $parent;
    }
    return @children;
}

# The error log of the host of that name, or of the default one.
sub error_log {
    my ($name) = @_;
    my $root = defined $name ? "$Base-$name" : $Root;
    open my $fh, '<', "$root/logs/error.log" or return '';
    local $/;
    <$fh> // '';
}

# Sends GET for every path, spread over `connections` concurrent keepalive connections.
# Returns a list of { path, status, sale, worker, seq } from the status and the X-Sale,
# X-Worker and X-Seq headers of each response.
# With `ports`, connection k goes to the k-th port, round robin: several hosts at once, and
# each result says which (`port`).
# With `once`, every request goes on a connection of its own (`Connection: close`) and is
# never sent again: a request nginx accepted but did not answer comes back with status 0 and
# sale NONE, one it did not accept with sale NO_CONNECTION (kept-alive connections are
# retried when nginx closes them, which hides both).
sub crowd {
    my (%opt) = @_;
    my @paths = @{ $opt{paths} };
    my $n = $opt{connections} // 64;
    my @ports = @{ $opt{ports} // [$Port] };
    my $once = $opt{once};
    my @kids;
    for my $k (0 .. $n - 1) {
        pipe(my $r, my $w) or die $!;
        my $pid = fork // die $!;
        if ($pid == 0) {
            close $r;
            local $Port = $ports[$k % @ports];
            my @mine = @paths[grep { $_ % $n == $k } 0 .. $#paths];
            my @done = $once ? map { request_once($_) } @mine : run_connection(\@mine);
            print $w join('', map { "$_->{path} $_->{status} $_->{sale} $_->{worker} $_->{seq} $Port "
                                    . "$_->{position} $_->{wait} $_->{retry}\n" } @done);
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
            my ($path, $status, $sale, $worker, $seq, $port, $position, $wait, $retry) =
                split ' ', $line;
            push @results, { path => $path, status => $status, sale => $sale, worker => $worker,
                             seq => $seq, port => $port, position => $position, wait => $wait,
                             retry => $retry };
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

# As `fetch`, from the host listening on `$port`.
sub fetch_at {
    my ($port, @request) = @_;
    local $Port = $port;
    return fetch(@request);
}

# A request with a JSON body to the host listening on `$port`, as the admin API wants it.
sub send_body {
    my ($port, $method, $path, $body) = @_;
    local $Port = $port;
    my ($res) = run_connection([$path], $method, ['Content-Type: application/json'], $body);
    return $res;
}

my $Redis;
my $RedisPort;

# Starts redis-server on 127.0.0.1:`port`, as a child, with its files in t/servroot-redis
# (emptied first when `fresh`); `args` are more of its options (e.g. [qw(--appendonly yes)]).
# Waits until it answers.
sub start_redis {
    my (%opt) = @_;
    my ($port, @args) = ($opt{port}, @{ $opt{args} // [] });
    stop_redis();
    my $dir = cwd() . '/t/servroot-redis';
    remove_tree($dir) if $opt{fresh};
    make_path($dir);
    $RedisPort = $port;
    $Redis = fork // die "fork: $!";
    if ($Redis == 0) {
        open STDOUT, '>>', "$dir/redis.log";
        exec 'redis-server', '--port', $port, '--bind', '127.0.0.1', '--dir', $dir,
            '--save', '', @args;
        exit 127;
    }
    my $deadline = time + 10;
    while (time < $deadline) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1);
        if ($s) {
            print $s "PING\r\n";
            my $line = <$s> // '';
            # PONG, or NOAUTH when a password is set: either way it serves.
            return if $line =~ /PONG|NOAUTH/;
        }
        sleep 0.05;
    }
    die "redis-server did not answer on $port";
}

# Stops Redis: by SIGKILL, as a crash would, when `$how` is 'KILL'.
sub stop_redis {
    my ($how) = @_;
    return unless $Redis;
    kill $how // 'TERM', $Redis;
    waitpid $Redis, 0;
    undef $Redis;
}

# Runs redis-cli against the test's Redis; returns its output.
sub redis_cli {
    my (@args) = @_;
    open my $cli, '-|', 'redis-cli', '-p', $RedisPort, '--no-auth-warning', @args or die $!;
    local $/;
    return <$cli> // '';
}

sub master_pid {
    open my $fh, '<', "$Root/logs/nginx.pid" or die "no nginx.pid: $!\n" . startup_error();
    chomp(my $pid = <$fh>);
    return $pid;
}

# The master's children (the workers), from /proc.
sub worker_pids { children(master_pid()) }

# SIGKILL to the master and every worker at once, as a crash would do.
sub kill_nginx {
    kill 'KILL', master_pid(), worker_pids();
    waitpid $Pid, 0 if $Pid;
    undef $Pid;
    sleep 0.2;
}

# One connection, requests in sequence; reconnects when nginx closes it.
sub run_connection {
    my ($paths, $method, $headers, $body) = @_;
    $method //= 'GET';
    $body //= '';
    my $extra = join '', map { "$_\r\n" } @{ $headers // [] };
    $extra .= 'Content-Length: ' . length($body) . "\r\n" if length $body;
    my @out;
    my $sock;
    my $buf = '';
    for my $path (@$paths) {
        for my $attempt (1 .. 3) {
            $sock ||= IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $Port)
                or die "connect: $!";
            print $sock "$method $path HTTP/1.1\r\nHost: localhost\r\n$extra\r\n$body";
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

# One GET on a connection of its own, never retried: { path, status, sale, ... }, status 0 and
# sale NONE when nginx closed the connection without an answer.
sub request_once {
    my ($path) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $Port)
        or return { path => $path, status => 0, sale => 'NO_CONNECTION', worker => '-', seq => '-',
                    position => '-', wait => '-', retry => '-' };
    print $sock "GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    my $buf = '';
    my $res = read_response($sock, \$buf)
        // { status => 0, sale => 'NONE', worker => '-', seq => '-', position => '-', wait => '-',
             retry => '-' };
    return { path => $path, %$res };
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
    # A waiter's place, wait and Retry-After, where the test's configuration sends them.
    my ($position) = $head =~ /^X-Position:\s*(\S+)/mi;
    my ($wait) = $head =~ /^X-Wait:\s*(\S+)/mi;
    my ($retry) = $head =~ /^Retry-After:\s*(\S+)/mi;
    my $close = $head =~ /^Connection:\s*close/mi;
    my $need = length($head) + 2 + ($length // 0);
    while (length $$buf < $need) {
        my $n = sysread $sock, $$buf, 65536, length $$buf;
        return undef unless $n;
    }
    my $res = { status => $status, sale => $sale // '-', worker => $worker // '-',
             seq => $seq // '-', position => $position // '-', wait => $wait // '-',
             retry => $retry // '-', close => $close, headers => $head,
             body => substr($$buf, length($head) + 2, $length // 0) };
    substr($$buf, 0, $need, '');
    return $res;
}

END {
    stop_nginx();
    stop_nginx($_) for keys %Hosts;
    stop_redis();
    # A daemon whose start this file did not see through (a test that died meanwhile) must not
    # go on listening on the ports of the files after it.
    if (open my $fh, '<', "$Root/logs/nginx.pid") {
        chomp(my $pid = <$fh> // '');
        kill 'TERM', $pid if $pid =~ /^\d+$/;
    }
}

1;
