package Test::Nginx::Socket;

# A small stand-in for OpenResty's Test::Nginx::Socket, for machines where CPAN (and so the
# real module) is out of reach. It implements only the sections and functions this project's
# t/*.t use, with the same meaning, so the same files pass under either. scripts/prove puts
# this directory on @INC only when the real module is not installed.
#
# Per block: write t/servroot/conf/nginx.conf from --- main_config, --- http_config and
# --- config; (re)start nginx as a child process (`daemon off`); send each request on its own
# connection; compare status, body and headers; then look for --- error_log and
# --- no_error_log patterns in what the block added to the error log. With
# TEST_NGINX_USE_HUP=1 nginx is started once and reloaded with SIGHUP between blocks, as the
# real module does, which keeps shared zones across blocks.
#
# Environment: TEST_NGINX_BINARY (default: nginx in PATH), TEST_NGINX_PORT (1984),
# TEST_NGINX_LOAD_MODULES (dynamic modules to load), TEST_NGINX_USE_HUP, and any
# $TEST_NGINX_* name used in a config section.

use Test::Base -base;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(sleep time);
use File::Path qw(make_path remove_tree);
use Cwd qw(cwd);

our @EXPORT = qw(run_tests repeat_each workers master_on master_off log_level
                 no_shuffle no_long_string no_root_location server_port html_dir);

my $RepeatEach = 1;
my $Workers = 1;
my $MasterOn = 0;
my $LogLevel = 'debug';
my $RootLocation = 1;
my $ServerPort = $ENV{TEST_NGINX_PORT} || 1984;
my $ServRoot = cwd() . '/t/servroot';
my $HtmlDir = "$ServRoot/html";
my $UseHup = $ENV{TEST_NGINX_USE_HUP};
my $NginxBinary = $ENV{TEST_NGINX_BINARY} || 'nginx';
my $NginxPid;

$ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
$ENV{TEST_NGINX_HTML_DIR} = $HtmlDir;

sub repeat_each { $RepeatEach = shift if @_; $RepeatEach }
sub workers { $Workers = shift }
sub master_on { $MasterOn = 1 }
sub master_off { $MasterOn = 0 }
sub log_level { $LogLevel = shift }
sub no_shuffle { }
sub no_long_string { }
sub no_root_location { $RootLocation = 0 }
sub server_port { $ServerPort }
sub html_dir { $HtmlDir }

sub expand_env {
    my $text = shift // '';
    $text =~ s{\$(TEST_NGINX_\w+)}{
        defined $ENV{$1} ? $ENV{$1} : die "environment variable $1 is not set\n"
    }ge;
    return $text;
}

sub write_file {
    my ($path, $content) = @_;
    open my $fh, '>', $path or die "cannot write $path: $!\n";
    print $fh $content;
    close $fh;
}

sub read_file_from {
    my ($path, $offset) = @_;
    open my $fh, '<', $path or return '';
    seek $fh, $offset, 0;
    local $/;
    my $text = <$fh>;
    return $text // '';
}

sub write_config {
    my $block = shift;
    my $modules = join '', map { "load_module $_;\n" }
        split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '';
    my $master = $MasterOn ? 'on' : 'off';
    my $user = $> == 0 ? "user root;\n" : '';
    my $main = expand_env(section($block, 'main_config'));
    my $http = expand_env(section($block, 'http_config'));
    my $server = expand_env(section($block, 'config'));
    my $root = $RootLocation ? "        location / { root $HtmlDir; index index.html; }\n" : '';
    my $temp = join '', map { "    ${_}_temp_path $ServRoot/${_}_temp;\n" }
        qw(client_body proxy fastcgi uwsgi scgi);
    write_file("$ServRoot/conf/nginx.conf", <<"CONF");
$modules${user}worker_processes $Workers;
daemon off;
master_process $master;
error_log logs/error.log $LogLevel;
pid logs/nginx.pid;
$main
events {
    accept_mutex off;
    worker_connections 1024;
}
http {
    access_log logs/access.log;
    default_type text/plain;
    keepalive_timeout 68;
$temp    $http
    server {
        listen 127.0.0.1:$ServerPort;
        server_name localhost;
        client_max_body_size 30M;
$root        $server
    }
}
CONF
}

sub nginx_running { defined $NginxPid && kill 0, $NginxPid }

sub stop_nginx {
    return unless defined $NginxPid;
    kill 'TERM', $NginxPid;
    my $deadline = time + 10;
    while (time < $deadline) {
        last if waitpid($NginxPid, POSIX::WNOHANG()) != 0;
        sleep 0.01;
    }
    if (kill 0, $NginxPid) {
        kill 'KILL', $NginxPid;
        waitpid $NginxPid, 0;
    }
    undef $NginxPid;
}

sub port_open {
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ServerPort,
                                     Proto => 'tcp', Timeout => 1);
    return 0 unless $sock;
    close $sock;
    return 1;
}

# Starts nginx, or reloads it in HUP mode. Returns the exit status if nginx died at startup.
sub start_nginx {
    my $block = shift;
    if ($UseHup && nginx_running()) {
        kill 'HUP', $NginxPid;
        # The reload replaces the workers; give the old ones time to stop accepting.
        sleep 0.5;
        return undef;
    }
    stop_nginx();
    pid_file_cleanup();
    $NginxPid = fork // die "fork: $!\n";
    if ($NginxPid == 0) {
        open STDERR, '>', "$ServRoot/logs/stderr.log";
        open STDOUT, '>', '/dev/null';
        exec $NginxBinary, '-p', "$ServRoot/", '-c', 'conf/nginx.conf';
        exit 127;
    }
    my $deadline = time + 10;
    while (time < $deadline) {
        if (waitpid($NginxPid, POSIX::WNOHANG()) == $NginxPid) {
            my $status = $? >> 8;
            undef $NginxPid;
            return $status || 255;
        }
        return undef if port_open();
        sleep 0.02;
    }
    die "nginx did not start listening on port $ServerPort\n";
}

sub pid_file_cleanup { unlink "$ServRoot/logs/nginx.pid" }

sub prepare_servroot {
    my $block = shift;
    if (!($UseHup && nginx_running())) {
        remove_tree($ServRoot);
        make_path(map { "$ServRoot/$_" } qw(conf html logs));
    }
    if (defined(my $files = section($block, 'user_files'))) {
        for my $file (split /^>>> /m, $files) {
            next unless length $file;
            my ($name, $content) = split /\n/, $file, 2;
            write_file("$HtmlDir/$name", $content // '');
        }
    }
}

sub send_request {
    my ($request, $more_headers, $timeout) = @_;
    $request =~ s/^\s+//;
    my ($line, $body) = split /\n/, $request, 2;
    $body //= '';
    $body =~ s/\n\z//;
    my ($method, $uri) = split ' ', $line;
    my @headers = ("Host: localhost", "Connection: close");
    for my $h (split /\n/, $more_headers // '') {
        push @headers, $h if $h =~ /\S/;
    }
    push @headers, "Content-Length: " . length($body)
        if length $body || $method =~ /^(POST|PUT|PATCH)$/;
    my $raw = "$method $uri HTTP/1.1\r\n" . join('', map { "$_\r\n" } @headers) . "\r\n$body";

    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ServerPort,
                                     Proto => 'tcp', Timeout => $timeout)
        or return { error => "cannot connect: $!" };
    print $sock $raw;
    my $select = IO::Select->new($sock);
    my $response = '';
    while ($select->can_read($timeout)) {
        my $n = sysread $sock, my $chunk, 65536;
        last unless $n;
        $response .= $chunk;
    }
    close $sock;
    return parse_response($response);
}

sub parse_response {
    my $raw = shift;
    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    return { error => "no response" } unless defined $head && $head =~ m{^HTTP/1\.\d (\d{3})};
    my %res = (status => $1, headers => {}, body => $body // '');
    my (undef, @lines) = split /\r\n/, $head;
    for my $line (@lines) {
        my ($name, $value) = split /:\s*/, $line, 2;
        $res{headers}{lc $name} //= $value;
    }
    if (($res{headers}{'transfer-encoding'} // '') =~ /chunked/i) {
        my ($chunked, $plain) = ($res{body}, '');
        while ($chunked =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $size = hex $1;
            last if $size == 0;
            $plain .= substr $chunked, 0, $size, '';
            $chunked =~ s/^\r\n//;
        }
        $res{body} = $plain;
    }
    return \%res;
}

# A section's value, or undef where the block has none. Test::Base only knows the accessors of
# sections some block uses, and they return a list in list context.
sub section {
    my ($block, $name) = @_;
    return $block->can($name) ? scalar $block->$name : undef;
}

sub nth {
    my ($value, $i) = @_;
    return ref $value eq 'ARRAY' ? $value->[$i] : $value;
}

sub check_response {
    my ($block, $name, $res, $i) = @_;
    if ($res->{error}) {
        fail("$name - $res->{error}");
        return;
    }
    my $code = nth(section($block, 'error_code'), $i) // 200;
    is($res->{status}, $code, "$name - status code ok");
    if (defined(my $body = nth(section($block, 'response_body'), $i))) {
        is($res->{body}, $body, "$name - response_body - response is expected");
    }
    if (defined(my $like = nth(section($block, 'response_body_like'), $i))) {
        $like =~ s/\n\z//;
        like($res->{body}, qr/$like/s, "$name - response_body_like - response is expected");
    }
    if (defined(my $headers = nth(section($block, 'response_headers'), $i))) {
        for my $line (split /\n/, $headers) {
            next unless $line =~ /\S/;
            if ($line =~ /^!\s*(\S+)/) {
                ok(!defined $res->{headers}{lc $1}, "$name - header $1 not present");
                next;
            }
            my ($key, $value) = split /:\s*/, $line, 2;
            is($res->{headers}{lc $key}, $value, "$name - header $key ok");
        }
    }
    if (defined(my $headers = nth(section($block, 'response_headers_like'), $i))) {
        for my $line (split /\n/, $headers) {
            next unless $line =~ /\S/;
            my ($key, $pattern) = split /:\s*/, $line, 2;
            like($res->{headers}{lc $key} // '', qr/^$pattern$/, "$name - header $key like");
        }
    }
}

sub patterns {
    my $value = shift;
    return () unless defined $value;
    return @$value if ref $value eq 'ARRAY';
    return ($value) if ref $value eq 'Regexp';
    return grep { /\S/ } split /\n/, $value;
}

sub check_logs {
    my ($block, $name, $log) = @_;
    for my $pattern (patterns(section($block, 'error_log'))) {
        my $found = ref $pattern ? $log =~ $pattern : index($log, $pattern) >= 0;
        ok($found, "$name - pattern \"$pattern\" should match a line in error.log");
    }
    for my $pattern (patterns(section($block, 'no_error_log'))) {
        my $found = ref $pattern ? $log =~ $pattern : index($log, $pattern) >= 0;
        ok(!$found, "$name - pattern \"$pattern\" does not match a line in error.log");
    }
}

sub run_block {
    my $block = shift;
    my $name = $block->name;
    prepare_servroot($block);
    my $log_file = "$ServRoot/logs/error.log";
    my $offset = -s $log_file || 0;
    write_config($block);
    my $died = start_nginx($block);

    if (defined section($block, 'must_die')) {
        ok(defined $died, "$name - nginx refused to start");
        my $log = read_file_from("$ServRoot/logs/stderr.log", 0) . read_file_from($log_file, 0);
        check_logs($block, $name, $log);
        return;
    }
    if (defined $died) {
        fail("$name - nginx exited at startup with status $died");
        diag(read_file_from("$ServRoot/logs/stderr.log", 0) . read_file_from($log_file, 0));
        return;
    }

    my $requests = section($block, 'request');
    my @requests = ref $requests eq 'ARRAY' ? @$requests : ($requests);
    my $timeout = section($block, 'timeout') || 3;
    for my $i (0 .. $#requests) {
        my $res = send_request($requests[$i], nth(section($block, 'more_headers'), $i), $timeout);
        check_response($block, $name, $res, $i);
    }
    # Log lines of the log phase are written right after the response.
    sleep(section($block, 'wait') || 0.05);
    check_logs($block, $name, read_file_from($log_file, $offset));
    stop_nginx() unless $UseHup;
}

sub run_tests {
    for my $block (blocks()) {
        run_block($block) for 1 .. $RepeatEach;
    }
    stop_nginx();
}

END { stop_nginx() }

1;
