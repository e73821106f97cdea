# The demos as `make run` and `make run-hosts` start them: both configurations pass nginx -t
# with the module, and the two-host demo (scripts/run-hosts: Redis and two nginx) sells
# exactly 3 laptops over both hosts, each winner passing on the other host.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);
use FlashSale::Crowd qw(fetch_at);

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my ($module) = split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '';
die "TEST_NGINX_LOAD_MODULES names no module" unless $module;

sub write_file {
    my ($path, $text) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $text;
    close $fh;
}

for my $demo ('nginx-conf', 'nginx-conf/hosts') {
    my $prefix = tempdir(CLEANUP => 1);
    mkdir "$prefix/$_" for qw(logs temp modules);
    system('cp', '-r', $demo, "$prefix/conf") == 0 or die "cp: $?";
    system('install', '-m', '0755', $module, "$prefix/modules/ngx_http_flash_sale_module.so") == 0
        or die "install: $?";
    write_file("$prefix/conf/flash_sale.key", '0123456789abcdef' x 4);
    write_file("$prefix/conf/host.conf", "listen 127.0.0.1:8091;\n");
    my $out = `$nginx -t -p $prefix/ -c conf/nginx.conf 2>&1`;
    is($?, 0, "$demo/nginx.conf passes nginx -t") or diag $out;
}

# scripts/run-hosts in a process group of its own, so that it can be stopped as Ctrl-C would.
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    POSIX::setsid();
    open STDOUT, '>', '/dev/null';
    $ENV{NGINX} = $nginx;
    $ENV{MODULE} = $module;
    exec 'scripts/run-hosts' or POSIX::_exit(127);
}
my $deadline = time + 20;
my $up = 0;
while (time < $deadline && $up < 2) {
    $up = grep { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $_) } 8091, 8092;
    sleep 0.05;
}
is($up, 2, 'make run-hosts: both hosts listen');

my (%admitted, $passed);
for my $n (1 .. 30) {
    for my $port (8091, 8092) {
        my $res = fetch_at($port, '/flashsale', 'GET', "Authorization: buyer$n");
        my ($sale) = $res->{headers} =~ /^X-Flash-Sale:\s*(\S+)/mi;
        $admitted{"buyer$n"} = $port if ($sale // '') eq 'ADMITTED';
        $passed++ if ($sale // '') eq 'PERMITTED';
    }
}
is(scalar keys %admitted, 3, 'make run-hosts: exactly 3 laptops sold over both hosts');
is($passed, 3, 'make run-hosts: each winner passes on the other host');

kill 'TERM', -$pid;
waitpid $pid, 0;
ok(!IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => 6390),
   'make run-hosts: stopping it stops Redis too');

done_testing();
