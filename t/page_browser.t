# The rejection page in a real browser: headless Chromium (Debian's), JavaScript off, opens a
# gated URL a few seconds before the sale starts, sees the NOT_STARTED page, and by the page's
# own refresh alone ends on the shop's page after the start, in one reload. Then a waiting
# line: behind five buyers, at 1r/s, the browser sees its place and wait, and by the page's
# refreshes alone reaches the shop in about the six seconds the pace predicts. Also: the refresh
# and the JSON give exactly the Retry-After header's seconds. t/lib/browse.py drives Chromium
# through its DevTools protocol on a pipe, in real time (--virtual-time-budget would run the
# refreshes at once, long before the start, and prove nothing about their timing).

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time);
use FlashSale::Crowd qw(start_nginx crowd_port fetch);

my $port = crowd_port();
sub at { POSIX::strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($_[0])) }

# The shop opens on the second that is 3 to 4 seconds away.
my $opening = POSIX::ceil(time) + 3;
my ($shop_start, $later_start, $later_end) = (at($opening), at(time + 100), at(time + 1000));
start_nginx(workers => 1, http => <<"HTTP");
    flash_sale_zone \$remote_addr zone=sale:1m;
    flash_sale_zone \$arg_buyer zone=line:1m;
    log_format sale "\$request_uri \$flash_sale_status";
    server {
        listen 127.0.0.1:$port;
        access_log logs/sale.log sale;
        location /shop {
            flash_sale zone=sale;
            flash_sale_start $shop_start;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /later {
            flash_sale zone=sale;
            flash_sale_start $later_start;
            flash_sale_end $later_end;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /tickets {
            flash_sale zone=line;
            flash_sale_queue rate=1r/s idle=1m refresh=20s;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend {
            default_type text/html;
            return 200 '<!DOCTYPE html><title>Shop</title><h1>Welcome to the shop</h1>';
        }
    }
HTTP

# The three answers to one request agree with its Retry-After, to the second.
for my $accept ('Accept: text/html', 'Accept: application/json', 'Accept: */*') {
    my $res = fetch('/later', 'GET', $accept);
    my ($retry) = $res->{headers} =~ /^Retry-After: (\d+)\r$/m;
    ok($retry && $retry > 90 && $retry <= 100, "$accept: Retry-After $retry");
    like($res->{headers}, qr/^Vary: Accept\r$/m, "$accept: Vary: Accept");
    if ($accept =~ /html/) {
        my ($refresh) = $res->{body} =~ /<meta http-equiv="refresh" content="(\d+)">/;
        is($refresh, $retry, 'the page refreshes after Retry-After');
    } elsif ($accept =~ /json/) {
        my $json = JSON::PP->new->decode($res->{body});
        is($json->{retry_after}, $retry, 'JSON: retry_after is Retry-After');
        is($json->{starts_in}, $retry, 'JSON: starts_in is Retry-After');
        ok($json->{ends_in} > $retry + 890 && $json->{ends_in} <= 1000, "JSON: ends_in $json->{ends_in}");
    } else {
        is($res->{body}, "NOT_STARTED: the sale has not started yet.\n", '*/*: the text as before');
    }
}

# A phone-sized browser, from a few seconds before the start until the shop shows.
my $root = $FlashSale::Crowd::Root;
my $shot = "$root/page.png";
my @loads = map { JSON::PP->new->decode($_) }
    `python3 t/lib/browse.py 'http://127.0.0.1:$port/shop?from=phone' --until 'Welcome to the shop' --timeout 20 --screenshot $shot`;
my $status = $? >> 8;
diag(sprintf "%.2f s: %s (refresh %s)", $_->{t}, $_->{title}, $_->{refresh} // 'none') for @loads;
is($status, 0, 'the browser reached the shop within 20 s');
is(scalar @loads, 2, 'in two loads: the waiting page, then the shop');
my ($first, $last) = @loads[0, -1];
is($first->{title}, 'The sale has not started yet', 'first: the NOT_STARTED page');
like($first->{text}, qr/The sale starts in \d+ seconds?/, 'which says when it starts');
ok($first->{refresh} >= 1 && $first->{refresh} <= 4, "and refreshes after $first->{refresh} s");
is($last->{title}, 'Shop', "then the shop's page");
like($last->{url}, qr{/shop\?from=phone$}, 'at the same URL');
ok($last->{wall} >= $opening, sprintf 'reached %.2f s after the start', $last->{wall} - $opening);
ok($last->{t} - $first->{t} >= $first->{refresh} - 0.05, 'by the refresh, not sooner');

# What nginx saw: one rejected request, then one admitted; no icon, no other request.
open my $log, '<', "$root/logs/sale.log" or die "sale.log: $!";
my @seen = grep { m{^/shop} } <$log>;
is_deeply(\@seen, ["/shop?from=phone NOT_STARTED\n", "/shop?from=phone ADMITTED\n"],
          'nginx saw the page, then the shop');

# The screenshot: a PNG of a phone's size.
open my $png, '<:raw', $shot or die "$shot: $!";
read $png, my $head, 24;
is(substr($head, 0, 8), "\x89PNG\r\n\x1a\n", 'the screenshot is a PNG');
is(join('x', unpack 'NN', substr($head, 16, 8)), '390x844', 'of a phone (390x844)');

# The line: five fans ahead (the first of six comes in at once), who never ask again.
my @fans = map { fetch("/tickets?buyer=fan$_", 'GET')->{status} } 1 .. 6;
is(join(' ', @fans), '200 503 503 503 503 503', 'five fans wait in the line');
my $joined = time;
my $queued_shot = "$root/queued.png";
my @line = map { JSON::PP->new->decode($_) }
    `python3 t/lib/browse.py 'http://127.0.0.1:$port/tickets?buyer=phone' --until 'Welcome to the shop' --timeout 30 --screenshot $queued_shot`;
is($? >> 8, 0, 'the browser in line reached the shop within 30 s');
diag(sprintf "%.2f s: %s (refresh %s)", $_->{t}, $_->{title}, $_->{refresh} // 'none') for @line;
my ($in_line, $shop) = ($line[0], $line[-1]);
is($in_line->{title}, 'You are in line', 'first: the line\'s page');
# Five ahead when the browser asks at once; one fewer for each second Chromium took to start
# (the line calls one a second), as a loaded machine shows.
my ($ahead) = $in_line->{text} =~ /Buyers ahead of you\s*(\d+)/;
my $late = int($in_line->{wall} - $joined);
ok(defined $ahead && $ahead <= 5 && $ahead >= 5 - $late - 1,
   sprintf 'with the place: %s ahead, asked %.1f s after the fans', $ahead // 'none',
   $in_line->{wall} - $joined);
my $wait = defined $ahead ? $ahead + 1 : -1;
like($in_line->{text}, qr/Estimated wait\s*about $wait seconds/,
     'and the wait the pace predicts: his place and his own turn, at one a second');
ok($in_line->{refresh} >= $wait - int($wait / 5) - 1 && $in_line->{refresh} <= $wait + int($wait / 5) + 1,
   "refreshing after $in_line->{refresh} s: the wait, spread by a fifth");
is($shop->{title}, 'Shop', "then the shop's page, by the page's refreshes alone");
my $took = $shop->{wall} - $joined;
ok($took >= 5.5 && $took <= 9, sprintf 'in %.1f s: about the 6 s the pace predicts', $took);
is(scalar(grep { $_->{title} eq 'You are in line' } @line), scalar(@line) - 1,
   'every load before it was the line\'s page');
ok(-s $queued_shot, 'the line\'s page, photographed');

done_testing();
