# What a rejected buyer sees, by what his Accept header prefers (RFC 9110, 12.5.1): a browser
# gets a page (valid HTML5, checked by tidy and by html5lib's parser, refreshing itself after
# Retry-After), a program asking for JSON gets the figures, and anything else (no Accept, */*,
# text/plain, curl's default) the one line of text as before. Every answer says Vary: Accept.
# An operator's error_page still wins, and sees $flash_sale_status.

use Test::Nginx::Socket 'no_plan';
use File::Temp ();
use JSON::PP ();
use POSIX ();

# An RFC 3339 time `seconds` from now.
sub at { POSIX::strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time + $_[0])) }

our $Chrome = 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,'
    . 'image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7';

# A gated location `/NAME` with these settings, proxied to /backend.
sub gated {
    my ($name, $settings) = @_;
    return <<"_EOC_";
    location /$name {
        flash_sale zone=sale;
        $settings
        proxy_pass http://127.0.0.1:\$TEST_NGINX_SERVER_PORT/backend;
    }
_EOC_
}

our $Backend = qq{    location /backend { return 200 "Welcome to the shop.\\n"; }\n};

# The JSON body as sorted `key=value` lines, `null` for null; anything else than an object of
# exactly the six keys says so.
sub json_lines {
    my ($body) = @_;
    my $data = eval { JSON::PP->new->decode($body) };
    return "not JSON: $body" unless ref $data eq 'HASH';
    my @keys = sort keys %$data;
    my $expected = join ' ', sort qw(status position wait_seconds retry_after starts_in ends_in);
    return "keys: @keys\n" unless "@keys" eq $expected;
    return join '', map { "$_=" . ($data->{$_} // 'null') . "\n" } @keys;
}

# What a validator says about `html`: `tidy -errors -q` (errors and warnings), then every parse
# error of html5lib, the HTML5 parsing algorithm of browsers, in Python (both from Debian).
sub validator_errors {
    my ($html) = @_;
    my $file = File::Temp->new(SUFFIX => '.html');
    print $file $html;
    close $file;
    my @errors = map { "tidy: $_" } grep { /\S/ } `tidy -errors -q $file 2>&1`;
    push @errors, "tidy exited with " . ($? >> 8) . "\n" if $?;
    my $python = q{import html5lib, sys
p = html5lib.HTMLParser()
p.parse(open(sys.argv[1], "rb").read())
for pos, code, data in p.errors: print("html5lib:", pos, code, data)
print("html5lib ran")};
    my @parsed = `/usr/bin/python3 -c '$python' $file 2>&1`;
    push @errors, grep { $_ ne "html5lib ran\n" } @parsed;
    push @errors, "html5lib did not run\n" unless grep { $_ eq "html5lib ran\n" } @parsed;
    return @errors;
}

# The page as lines to compare: the validators' complaints (none), its refresh, title, heading,
# figures and status line; a script or anything fetched from elsewhere would show.
sub page_lines {
    my ($html) = @_;
    my @lines = validator_errors($html);
    my ($refresh) = $html =~ /<meta http-equiv="refresh" content="([^"]*)">/;
    push @lines, "refresh=" . ($refresh // 'none') . "\n";
    push @lines, "viewport\n" if $html =~ /<meta name="viewport" content="width=device-width, initial-scale=1">/;
    push @lines, "title=$1\n" if $html =~ m{<title>(.*?)</title>}s;
    push @lines, "h1=$1\n" if $html =~ m{<h1>(.*?)</h1>}s;
    push @lines, "p=$1\n" if $html =~ m{<h1>.*?</h1>\n<p>(.*?)</p>}s;
    push @lines, "$1=$2\n" while $html =~ m{<dt>(.*?)</dt><dd>(.*?)</dd>}g;
    push @lines, "note=$1\n" if $html =~ m{<p class="note">(.*?)</p>}s;
    push @lines, "status=$1\n" if $html =~ m{<p class="status">(.*?)</p>}s;
    push @lines, "script\n" if $html =~ /<script/i;
    push @lines, "fetches $1\n" while $html =~ /\b((?:src|href)="(?!data:)[^"]*"|url\(|\@import|https?:)/gi;
    return join '', @lines;
}

sub same { $_[0] }

check_accum_error_log();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: NOT_STARTED: the text for no Accept, */*, text/plain and curl; the page for a browser; the JSON for a program
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('soon', 'flash_sale_start ' . ::at(3600) . '; flash_sale_end ' . ::at(7200) . ';') . $::Backend
--- request eval
["GET /soon?user=a", "GET /soon?user=a", "GET /soon?user=a", "GET /soon?user=a", "GET /soon?user=a",
 "GET /soon?user=a", "GET /soon?user=a"]
--- more_headers eval
["", "Accept: */*", "Accept: text/plain", "User-Agent: curl/7.88.1\nAccept: */*",
 "Accept: text/html", "Accept: $::Chrome", "Accept: application/json"]
--- error_code eval
[(503) x 7]
--- response_headers_like eval
[("Content-Type: text/plain\nVary: Accept\nCache-Control: no-store\nRetry-After: 3[56]\\d\\d") x 4,
 ("Content-Type: text/html; charset=utf-8\nVary: Accept\nCache-Control: no-store\nRetry-After: 3[56]\\d\\d") x 2,
 "Content-Type: application/json\nVary: Accept\nCache-Control: no-store\nRetry-After: 3[56]\\d\\d"]
--- response_body_filters eval
[([\&::same]) x 4, ([\&::page_lines]) x 2, [\&::json_lines]]
--- response_body_like eval
[("NOT_STARTED: the sale has not started yet\\.\n") x 4,
 (qr{\Arefresh=(3[56]\d\d)
viewport
title=The sale has not started yet
h1=The sale has not started yet
p=Keep this page open: it reloads by itself when the sale starts\.
The sale starts in=(5\d minutes \d+ seconds|1 hour)
The sale ends in=(1 hour 5\d minutes|2 hours)
note=This page reloads by itself in (5\d minutes \d+ seconds|1 hour)\.
status=NOT_STARTED
\z}) x 2,
 qr{\Aends_in=(7[01]\d\d|7200)
position=null
retry_after=(3[56]\d\d)
starts_in=(3[56]\d\d)
status=NOT_STARTED
wait_seconds=null
\z}]
--- no_error_log
[error]



=== TEST 2: PREQUEUED: registered, and told so; the page reloads at the start
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('drop', 'flash_sale_start ' . ::at(600) . '; flash_sale_prequeue 1h; flash_sale_block_ratio 0.5;') . $::Backend
--- request eval
["GET /drop?user=a", "GET /drop?user=a", "GET /drop?user=a"]
--- more_headers eval
["Accept: text/html", "Accept: application/json", ""]
--- error_code eval
[503, 503, 503]
--- response_headers_like eval
["Content-Type: text/html; charset=utf-8\nVary: Accept\nRetry-After: (5\\d\\d|600)",
 "Content-Type: application/json\nVary: Accept\nRetry-After: (5\\d\\d|600)",
 "Content-Type: text/plain\nVary: Accept\nRetry-After: (5\\d\\d|600)"]
--- response_body_filters eval
[[\&::page_lines], [\&::json_lines], [\&::same]]
--- response_body_like eval
[qr{\Arefresh=(5\d\d|600)
viewport
title=You are in the draw
h1=You are in the draw
p=You are registered for the draw at the start\. Keep this page open: it reloads by itself when the sale starts, and then shows whether you were drawn\.
The sale starts in=([89] minutes \d+ seconds|10 minutes)
note=This page reloads by itself in ([89] minutes \d+ seconds|10 minutes)\.
status=PREQUEUED
\z},
 qr{\Aends_in=null
position=null
retry_after=(5\d\d|600)
starts_in=(5\d\d|600)
status=PREQUEUED
wait_seconds=null
\z},
 "PREQUEUED: you are in the draw at the start; come back when the sale starts\\.\n"]



=== TEST 3: ENDED and SOLD_OUT: no refresh, nothing to retry; the time left where there is one
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('over', 'flash_sale_start 2021-08-08T00:00:00Z; flash_sale_end 2021-08-08T01:00:00Z;')
. ::gated('gone', 'flash_sale_max_permits 0; flash_sale_end ' . ::at(3600) . ';') . $::Backend
--- request eval
["GET /over?user=a", "GET /over?user=a", "GET /over?user=a",
 "GET /gone?user=a", "GET /gone?user=a", "GET /gone?user=a"]
--- more_headers eval
["Accept: text/html", "Accept: application/json", "",
 "Accept: text/html", "Accept: application/json", "Accept: */*"]
--- error_code eval
[(503) x 6]
--- response_headers_like eval
["Content-Type: text/html; charset=utf-8\nVary: Accept\nCache-Control: no-store\nRetry-After: ",
 "Content-Type: application/json\nVary: Accept\nRetry-After: ",
 "Content-Type: text/plain\nVary: Accept\nRetry-After: ",
 "Content-Type: text/html; charset=utf-8\nVary: Accept\nRetry-After: ",
 "Content-Type: application/json\nVary: Accept\nRetry-After: ",
 "Content-Type: text/plain\nVary: Accept\nRetry-After: "]
--- response_body_filters eval
[[\&::page_lines], [\&::json_lines], [\&::same], [\&::page_lines], [\&::json_lines], [\&::same]]
--- response_body_like eval
["refresh=none
viewport
title=The sale has ended
h1=The sale has ended
p=This sale is over and takes no more orders\\.
status=ENDED
",
 "ends_in=null
position=null
retry_after=null
starts_in=null
status=ENDED
wait_seconds=null
",
 "ENDED: the sale has ended\\.\n",
 qr{\Arefresh=none
viewport
title=Sold out
h1=Sold out
p=What you asked for has all been sold\.
The sale ends in=(5\d minutes \d+ seconds|1 hour)
status=SOLD_OUT
\z},
 qr{\Aends_in=(3[56]\d\d)
position=null
retry_after=null
starts_in=null
status=SOLD_OUT
wait_seconds=null
\z},
 "SOLD_OUT: what you asked for is sold out\\.\n"]



=== TEST 4: BLOCKED: no refresh (asking again is a new draw, not a wait), every figure null
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('draw', 'flash_sale_block_ratio 1;') . $::Backend
--- request eval
["GET /draw?user=a", "GET /draw?user=a", "GET /draw?user=a"]
--- more_headers eval
["Accept: text/html", "Accept: application/json", ""]
--- error_code eval
[503, 503, 503]
--- response_headers_like eval
["Content-Type: text/html; charset=utf-8\nVary: Accept\nRetry-After: ",
 "Content-Type: application/json\nVary: Accept\nRetry-After: ",
 "Content-Type: text/plain\nVary: Accept\nRetry-After: "]
--- response_body_filters eval
[[\&::page_lines], [\&::json_lines], [\&::same]]
--- response_body eval
["refresh=none
viewport
title=Not this time
h1=Not this time
p=More people want to buy than there is stock, so a random draw decides who may buy. It did not pick you this time.
status=BLOCKED
",
 "ends_in=null
position=null
retry_after=null
starts_in=null
status=BLOCKED
wait_seconds=null
",
 "BLOCKED: you were not drawn this time.\n"]



=== TEST 5: UNAVAILABLE (Redis does not answer): Retry-After 5, and the page refreshes after it
--- http_config
    flash_sale_zone $arg_user zone=shared:1m;
    flash_sale_redis zone=shared server=127.0.0.1:1 timeout=50ms;
--- config
    location /shared {
        flash_sale zone=shared;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "Welcome to the shop.\n"; }
--- request eval
["GET /shared?user=a", "GET /shared?user=a", "GET /shared?user=a"]
--- more_headers eval
["Accept: text/html", "Accept: application/json", ""]
--- error_code eval
[503, 503, 503]
--- response_headers_like eval
["Content-Type: text/html; charset=utf-8\nVary: Accept\nRetry-After: 5",
 "Content-Type: application/json\nVary: Accept\nRetry-After: 5",
 "Content-Type: text/plain\nVary: Accept\nRetry-After: 5"]
--- response_body_filters eval
[[\&::page_lines], [\&::json_lines], [\&::same]]
--- response_body eval
["refresh=5
viewport
title=Please wait a moment
h1=Please wait a moment
p=The sale cannot take new buyers right now. Keep this page open: it tries again by itself in a few seconds.
note=This page reloads by itself in 5 seconds.
status=UNAVAILABLE
",
 "ends_in=null
position=null
retry_after=5
starts_in=null
status=UNAVAILABLE
wait_seconds=null
",
 "UNAVAILABLE: the sale cannot take new buyers right now.\n"]



=== TEST 6: q-values: q=0 refuses, the higher weight wins, the most specific range gives it, a tie goes to the text
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('gone', 'flash_sale_max_permits 0;') . $::Backend
--- request eval
[("GET /gone?user=a") x 9]
--- more_headers eval
["Accept: text/html;q=0, application/json",
 "Accept: application/json;q=0.5, text/html",
 "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
 "Accept: text/html, text/plain",
 "Accept: application/json, text/plain, */*",
 "Accept: text/*;q=0.3, text/html;q=0.7, application/json;q=0.5",
 "Accept: text/html;q=0.1, text/*;q=0.9, application/json;q=0.5",
 "Accept: image/png",
 "Accept: TEXT/HTML;Q=0.5, Application/Json;q=0.4"]
--- error_code eval
[(503) x 9]
--- response_headers_like eval
["Content-Type: application/json\nVary: Accept",
 "Content-Type: text/html; charset=utf-8\nVary: Accept",
 "Content-Type: text/html; charset=utf-8\nVary: Accept",
 "Content-Type: text/plain\nVary: Accept",
 "Content-Type: text/plain\nVary: Accept",
 "Content-Type: text/html; charset=utf-8\nVary: Accept",
 "Content-Type: text/plain\nVary: Accept",
 "Content-Type: text/plain\nVary: Accept",
 "Content-Type: text/html; charset=utf-8\nVary: Accept"]
--- response_body_like eval
["\"status\": \"SOLD_OUT\"", "<h1>Sold out</h1>", "<h1>Sold out</h1>", "^SOLD_OUT: what you asked for is sold out\\.\n\$",
 "^SOLD_OUT: what you asked for is sold out\\.\n\$", "<h1>Sold out</h1>", "^SOLD_OUT: what you asked for is sold out\\.\n\$",
 "^SOLD_OUT: what you asked for is sold out\\.\n\$", "<h1>Sold out</h1>"]



=== TEST 7: NO_KEY (401) and KEY_TOO_LONG (400) are answered alike
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('sale', '') . $::Backend
--- request eval
["GET /sale", "GET /sale", "GET /sale?user=" . ("k" x 1025), "GET /sale?user=" . ("k" x 1025)]
--- more_headers eval
["Accept: text/html", "Accept: application/json", "Accept: text/html", "Accept: application/json"]
--- error_code eval
[401, 401, 400, 400]
--- response_headers_like eval
[("Vary: Accept\nRetry-After: ") x 4]
--- response_body_filters eval
[[\&::page_lines], [\&::json_lines], [\&::page_lines], [\&::json_lines]]
--- response_body eval
["refresh=none
viewport
title=Sign in to take part
h1=Sign in to take part
p=This sale needs to know who is buying, and this request did not say. Sign in, then open this page again.
status=NO_KEY
",
 "ends_in=null
position=null
retry_after=null
starts_in=null
status=NO_KEY
wait_seconds=null
",
 "refresh=none
viewport
title=Your sign-in cannot be used here
h1=Your sign-in cannot be used here
p=The identity this request carries is longer than this sale accepts. Sign in again, then open this page again.
status=KEY_TOO_LONG
",
 "ends_in=null
position=null
retry_after=null
starts_in=null
status=KEY_TOO_LONG
wait_seconds=null
"]



=== TEST 8: flash_sale_verify's 403 too, its words escaped in the page (shop&#39;s)
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config
    location /checkout {
        flash_sale_token_secret ../html/token.key;
        flash_sale_verify zone=sale;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location /backend { return 200 "Pay here.\n"; }
--- user_files
>>> token.key
5f0c7a1e9b2d4c6e8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f
--- request eval
["GET /checkout?user=a", "GET /checkout?user=a", "GET /checkout?user=a"]
--- more_headers eval
["", "Accept: application/json", "Accept: text/html"]
--- error_code eval
[403, 403, 403]
--- response_headers_like eval
["Content-Type: text/plain\nVary: Accept\nCache-Control: no-store",
 "Content-Type: application/json\nVary: Accept",
 "Content-Type: text/html; charset=utf-8\nVary: Accept"]
--- response_body_filters eval
[[\&::same], [\&::json_lines], [\&::page_lines]]
--- response_body eval
["TOKEN_MISSING: this page needs the token of a flash-sale permit.\n",
 "ends_in=null
position=null
retry_after=null
starts_in=null
status=TOKEN_MISSING
wait_seconds=null
",
 "refresh=none
viewport
title=This page needs a sale permit
h1=This page needs a sale permit
p=This page is for buyers who won a place in the sale, and this request carries no permit. Open it from the shop&#39;s page after winning.
status=TOKEN_MISSING
"]



=== TEST 9: an own page (error_page) wins over every representation, and shows $flash_sale_status
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('gone', 'flash_sale_max_permits 0; error_page 503 /soldout;') . $::Backend . q{
    location = /soldout {
        internal;
        default_type text/html;
        return 503 '<!DOCTYPE html><title>Sold out</title><p>Our own page: $flash_sale_status</p>\n';
    }
}
--- request eval
["GET /gone?user=a", "GET /gone?user=a", "GET /gone?user=a"]
--- more_headers eval
["Accept: text/html", "Accept: application/json", ""]
--- error_code eval
[503, 503, 503]
--- response_headers_like eval
[("Content-Type: text/html\nCache-Control: no-store\nVary: ") x 3]
--- response_body eval
[("<!DOCTYPE html><title>Sold out</title><p>Our own page: SOLD_OUT</p>\n") x 3]



=== TEST 10: an own page with SSI: <!--# echo var="flash_sale_status" -->, Retry-After kept
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('soon', 'flash_sale_start ' . ::at(3600) . '; error_page 503 /wait.html;') . $::Backend . q{
    location = /wait.html {
        internal;
        ssi on;
        root html;
    }
}
--- user_files
>>> wait.html
<!DOCTYPE html><title>Wait</title><p>Status: <!--# echo var="flash_sale_status" -->.</p>
--- request eval
["GET /soon?user=a", "GET /soon?user=a"]
--- more_headers eval
["Accept: text/html", ""]
--- error_code eval
[503, 503]
--- response_headers_like eval
[("Content-Type: text/html\nRetry-After: 3[56]\\d\\d") x 2]
--- response_body eval
[("<!DOCTYPE html><title>Wait</title><p>Status: NOT_STARTED.</p>\n") x 2]



=== TEST 11: HEAD gets the chosen representation's headers and no body; 444 still closes, whatever the Accept
--- http_config
    flash_sale_zone $arg_user zone=sale:1m;
--- config eval
::gated('gone', 'flash_sale_max_permits 0;') . ::gated('bots', 'flash_sale_block_ratio 1; flash_sale_reject_status 444;') . $::Backend
--- request eval
["HEAD /gone?user=a", "GET /bots?user=a"]
--- more_headers eval
["Accept: text/html", "Accept: text/html"]
--- error_code eval
[503, ""]
--- response_headers_like eval
["Content-Type: text/html; charset=utf-8\nVary: Accept", ""]
--- response_body eval
["", ""]
