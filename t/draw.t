# flash_sale_draw per_key: one ticket per buyer. 1,000 buyers who retry 50 times and 1,000 who
# try once, ratio 0.9, no cap: with per_key both groups win 10% +- 3%; with per_request (the
# default) the retriers win almost always.

use strict;
use warnings;
use Test::More;
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch);

my $port = crowd_port();
start_nginx(workers => 2, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=fair:10m;
    flash_sale_zone \$arg_user zone=lottery:10m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        add_header X-Sale \$flash_sale_status always;
        location /fair {
            flash_sale zone=fair;
            flash_sale_block_ratio 0.9;
            flash_sale_draw per_key;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /lottery {
            flash_sale zone=lottery;
            flash_sale_block_ratio 0.9;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
    }
HTTP

# The share of buyers with a given prefix who got through at least once.
sub winners {
    my ($prefix, @results) = @_;
    my (%tried, %won);
    for (@results) {
        my ($user) = $_->{path} =~ /user=($prefix\d+)/ or next;
        $tried{$user} = 1;
        $won{$user} = 1 if $_->{status} == 200;
    }
    return scalar(keys %won) / scalar(keys %tried);
}

for my $where (qw(fair lottery)) {
    my @paths = ((map { my $i = $_; map { "/$where?user=retrier$i" } 1 .. 50 } 1 .. 1000),
                 (map { "/$where?user=once$_" } 1 .. 1000));
    my @results = crowd(paths => \@paths, connections => 32);
    is(scalar @results, 51_000, "$where: every request answered");
    my ($retriers, $once) = (winners('retrier', @results), winners('once', @results));
    diag(sprintf "%s: retriers won %.1f%%, one-time buyers %.1f%%", $where, 100 * $retriers,
         100 * $once);
    if ($where eq 'fair') {
        ok($retriers >= 0.07 && $retriers <= 0.13, "per_key: retrying 50 times wins 10% +- 3% ($retriers)");
        ok($once >= 0.07 && $once <= 0.13, "per_key: trying once wins 10% +- 3% ($once)");
    } else {
        ok($retriers > 0.95, "per_request: retrying 50 times almost always wins ($retriers)");
        ok($once >= 0.07 && $once <= 0.13, "per_request: trying once wins 10% +- 3% ($once)");
    }
}
stop_nginx();

done_testing();
