# Times in every directive of the module, and in the admin API's "ttl", are read exactly as
# nginx reads its own: each value below is given to nginx's `send_timeout`
# (ngx_conf_set_msec_slot) and to each of the module's time settings, and `nginx -t` (or the
# API) must accept or refuse it alike. A refusal quotes the bad value itself, not another
# word of the directive. Zero, which nginx takes, is refused where a time must be more than
# zero, and said so.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);

my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my ($module) = split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '';
die "TEST_NGINX_LOAD_MODULES names no module" unless $module;

my $prefix = tempdir(CLEANUP => 1);
mkdir "$prefix/$_" for qw(conf logs);

# Runs nginx -t on an http block; returns (accepted, output).
sub nginx_t {
    my ($http) = @_;
    open my $fh, '>', "$prefix/conf/nginx.conf" or die $!;
    print $fh <<"CONF";
load_module $module;
error_log logs/error.log;
pid logs/nginx.pid;
events {}
http {
    client_body_temp_path $prefix/logs;
    proxy_temp_path $prefix/logs;
    fastcgi_temp_path $prefix/logs;
    uwsgi_temp_path $prefix/logs;
    scgi_temp_path $prefix/logs;
    flash_sale_zone \$arg_user zone=sale:1m;
    flash_sale_zone \$arg_user zone=shared:1m;
$http
}
CONF
    close $fh;
    my $out = `$nginx -t -p $prefix/ -c conf/nginx.conf 2>&1`;
    return ($? == 0, $out);
}

# The module's settings that take a time of more than zero, as a location line each, and the
# one that takes a time in a parameter.
my %uses = (
    'flash_sale_permit_ttl' => sub { "server { location / { flash_sale_permit_ttl \"$_[0]\"; } }" },
    'flash_sale_prequeue'   => sub { "server { location / { flash_sale_prequeue \"$_[0]\"; } }" },
    'flash_sale_draw per_key' =>
        sub { "server { location / { flash_sale_draw per_key \"$_[0]\"; } }" },
    'flash_sale_redis timeout=' =>
        sub { "flash_sale_redis zone=shared server=127.0.0.1:6379 \"timeout=$_[0]\";" },
    'flash_sale_redis cache=' =>
        sub { "flash_sale_redis zone=shared server=127.0.0.1:6379 \"cache=$_[0]\";" },
);

my @values = (
    '1h30m', '1h 30m', '1h   30m 15s', '1w', '1w2d', '500ms', '1s500ms', '1m 30s', '90',
    '1h5', '5 ', '1 2', '1d', '2h', '10m', '30s', '45', '1y', '1M', '30m1h', '1h1h', '1ms1s',
    '1s 2 ', '1 s', '1.5h', '-1s', '+1s', '1H', '1 2 3', 'soon', 'ms', 'h', ' ', '1h 30',
    '15250284452w', '15250284453w', '9223372036854775807ms', '9223372036854775808ms',
);

for my $value (@values) {
    my ($nginx_accepts, $nginx_out) = nginx_t(
        "server { location / { send_timeout \"$value\"; } }");
    for my $use (sort keys %uses) {
        my ($accepts, $out) = nginx_t($uses{$use}->($value));
        is($accepts ? 1 : 0, $nginx_accepts ? 1 : 0,
           "\"$value\": $use " . ($nginx_accepts ? 'accepts' : 'refuses') . ' it as send_timeout does')
            or diag $out;
        if (!$accepts && $use !~ /redis/) {
            like($out, qr/invalid value "\Q$value\E" in "flash_sale_\w+" directive/,
                 "\"$value\": $use quotes the bad time");
        }
        if (!$accepts && $use =~ /redis (\w+)=/) {
            like($out, qr/invalid parameter "$1=\Q$value\E"/,
                 "\"$value\": $use quotes the bad parameter");
        }
    }
}

# Zero is a time to nginx, but no time for a permit, a pre-queue, a draw's round or Redis's
# timeout: refused. (cache=0 means "trust no cached answer", below.)
for my $use (grep { !/cache/ } sort keys %uses) {
    my ($accepts, $out) = nginx_t($uses{$use}->('0s'));
    ok(!$accepts, "$use refuses 0s");
    like($out, qr/invalid (value|parameter) "(timeout=)?0s"/, "$use quotes 0s");
}
# flash_sale_redis cache=0 means "never trust a cached answer": accepted, as the README says.
ok((nginx_t('flash_sale_redis zone=shared server=127.0.0.1:6379 cache=0;'))[0],
   'flash_sale_redis takes cache=0');
ok((nginx_t('flash_sale_redis zone=shared server=127.0.0.1:6379 "cache=1s 500ms";'))[0],
   'flash_sale_redis takes "cache=1s 500ms"');

# The admin API's "ttl" takes the same times: a grant with each value is made (200) where
# send_timeout takes it, and refused (400, nothing granted) where it does not.
{
    use FlashSale::Crowd qw(start_nginx stop_nginx send_body crowd_port fetch_at);
    my $port = crowd_port();
    start_nginx(workers => 1, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=sale:1m;
    server {
        listen 127.0.0.1:$port;
        location /api/ { flash_sale_api; }
    }
HTTP
    my $n = 0;
    for my $value (@values) {
        my ($nginx_accepts) = nginx_t("server { location / { send_timeout \"$value\"; } }");
        my $key = 'ttl' . $n++;
        (my $json = $value) =~ s/(["\\])/\\$1/g;
        my $res = send_body($port, 'POST', '/api/zones/sale/permits',
                            "[{\"key\": \"$key\", \"ttl\": \"$json\"}]");
        is($res->{status}, $nginx_accepts ? 200 : 400,
           "API ttl \"$value\": " . ($nginx_accepts ? 'granted' : 'refused') . ' as send_timeout does');
        my $held = fetch_at($port, "/api/zones/sale/permits/$key")->{status};
        is($held, $nginx_accepts ? 200 : 404, "API ttl \"$value\": the permit is there only if granted");
    }
    stop_nginx();
}

done_testing();
