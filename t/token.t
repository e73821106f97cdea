# Signed permits: $flash_sale_token gives an admitted buyer a JWT (HS256) that any HMAC-SHA256
# library checks, and flash_sale_verify passes a checkout request only with a valid, unexpired
# token for its own key and zone: also on "another host" (a fresh nginx with the same secret
# and no permits at all).

use strict;
use warnings;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url decode_base64url);
use Time::HiRes qw(sleep);
use FlashSale::Crowd qw(start_nginx stop_nginx crowd_port fetch error_log);

my $port = crowd_port();
my $secret = '5f0c7a1e9b2d4c6e8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f';
my $other_secret = 'another secret, also long enough for HS256 keys';
my %files = ('token.key' => "$secret\n");

my $checkout = <<"CHECKOUT";
        flash_sale_token_secret token.key;
        location /checkout {
            flash_sale_verify zone=shop;
            add_header X-Seq \$flash_sale_seq always;
            proxy_pass http://127.0.0.1:$port/paid;
        }
        location /checkout-cookie {
            flash_sale_verify zone=shop token=\$cookie_permit;
            proxy_pass http://127.0.0.1:$port/paid;
        }
        location /other-sale {
            flash_sale_verify zone=phone;
            proxy_pass http://127.0.0.1:$port/paid;
        }
        location /checkout-dry {
            flash_sale_verify zone=shop;
            flash_sale_dry_run on;
            flash_sale_log_level warn;
            proxy_pass http://127.0.0.1:$port/paid;
        }
        location /paid { return 200 "paid\\n"; }
        location /metrics { flash_sale_metrics; }
CHECKOUT

start_nginx(workers => 2, files => \%files, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=shop:1m;
    flash_sale_zone \$arg_user zone=phone:1m;
    server {
        listen 127.0.0.1:$port;
        location /buy {
            flash_sale zone=shop;
            flash_sale_permit_ttl 1h;
            flash_sale_token_secret token.key;
            proxy_set_header X-Token \$flash_sale_token;
            proxy_pass http://127.0.0.1:$port/token;
        }
        location /quick {
            flash_sale zone=shop;
            flash_sale_permit_ttl 1s;
            flash_sale_token_secret token.key;
            proxy_set_header X-Token \$flash_sale_token;
            proxy_pass http://127.0.0.1:$port/token;
        }
        location /token { return 200 \$http_x_token; }
$checkout
    }
HTTP

sub jwt {
    my ($key, $claims) = @_;
    my $unsigned = join '.', encode_base64url('{"alg":"HS256","typ":"JWT"}'),
        encode_base64url($claims);
    return "$unsigned." . encode_base64url(hmac_sha256($unsigned, $key));
}

sub bearer { ("Authorization: Bearer $_[0]") }

# What a backend does, in any language: check the signature, then read the claims.
my $token = fetch('/buy?user=alice')->{body};
my ($h, $p, $s) = split /\./, $token;
is(decode_base64url($h), '{"alg":"HS256","typ":"JWT"}', 'a standard JWT header');
is($s, encode_base64url(hmac_sha256("$h.$p", $secret)), 'signed with HMAC-SHA256 over header.payload');
my $claims = decode_base64url($p);
like($claims, qr/^\{"zone":"shop","sub":"alice","seq":1,"exp":(\d+)\}$/, "claims: $claims");
my ($exp) = $claims =~ /"exp":(\d+)/;
ok(abs($exp - (time + 3600)) <= 2, 'exp is the permit\'s expiry, one hour away');
is(fetch('/buy?user=alice')->{body}, $token, 'the same buyer gets the same token');
is(fetch('/buy?user=bob')->{body} =~ /^[\w-]+\.([\w-]+)\./ && decode_base64url($1),
   sprintf('{"zone":"shop","sub":"bob","seq":2,"exp":%d}', $exp), 'bob holds permit 2');

my $res = fetch('/checkout?user=alice', 'GET', bearer($token));
is($res->{status}, 200, 'checkout: alice passes with her token');
is($res->{body}, "paid\n", 'and reaches the backend');
like($res->{headers}, qr/^X-Seq: 1\r$/m, '$flash_sale_seq is the token\'s permit number');
is(fetch('/checkout-cookie?user=alice', 'GET', "Cookie: permit=$token")->{status}, 200,
   'token=$cookie_permit reads the token from a cookie');

my @refused = (
    ['no token', '/checkout?user=alice', [], 'TOKEN_MISSING'],
    ['another buyer\'s token', '/checkout?user=bob', [bearer($token)], 'TOKEN_OTHER_KEY'],
    ['another sale\'s token', '/other-sale?user=alice', [bearer($token)], 'TOKEN_OTHER_ZONE'],
    ['a token signed with another secret', '/checkout?user=alice',
     [bearer(jwt($other_secret, '{"zone":"shop","sub":"alice","seq":1}'))], 'TOKEN_INVALID'],
    ['alice\'s signature on claims for mallory', '/checkout?user=mallory',
     [bearer(join '.', $h, encode_base64url('{"zone":"shop","sub":"mallory","seq":1}'), $s)],
     'TOKEN_INVALID'],
    ['an unsigned token ("alg": "none")', '/checkout?user=alice',
     [bearer(encode_base64url('{"alg":"none","typ":"JWT"}') . ".$p.")], 'TOKEN_INVALID'],
    ['a token that expired', '/checkout?user=alice',
     [bearer(jwt($secret, sprintf '{"zone":"shop","sub":"alice","seq":1,"exp":%d}', time - 5))],
     'TOKEN_EXPIRED'],
    ['garbage', '/checkout?user=alice', [bearer('not.a.token')], 'TOKEN_INVALID'],
    ['a Basic credential', '/checkout?user=alice', ['Authorization: Basic YTpi'], 'TOKEN_MISSING'],
);
for my $case (@refused) {
    my ($what, $path, $headers, $reason) = @$case;
    my $r = fetch($path, 'GET', @$headers);
    is($r->{status}, 403, "$what: 403");
    like($r->{body}, qr/^\Q$reason\E: /, "$what: $reason");
}
my $valid_perl = jwt($secret, '{"zone":"shop","sub":"carol","seq":99}');
is(fetch('/checkout?user=carol', 'GET', bearer($valid_perl))->{status}, 200,
   'a token signed by another implementation with the secret passes');

# A permit of one second: its token stops passing when the permit ends.
my $quick = fetch('/quick?user=dave')->{body};
is(fetch('/checkout?user=dave', 'GET', bearer($quick))->{status}, 200, 'a fresh short token passes');
sleep 1.1;
like(fetch('/checkout?user=dave', 'GET', bearer($quick))->{body}, qr/^TOKEN_EXPIRED/,
     'a second later it has expired');

my $metrics = fetch('/metrics')->{body};
like($metrics, qr/^flash_sale_tokens_valid_total\{zone="shop"\} 4$/m, 'metrics: valid tokens');
like($metrics, qr/^flash_sale_tokens_refused_total\{zone="shop"\} 9$/m, 'metrics: refused tokens');
like($metrics, qr/^flash_sale_tokens_refused_total\{zone="phone"\} 1$/m,
     'metrics: counted in the zone that checked');

# Dry run: a refusal is logged and counted, and the request goes on.
is(fetch('/checkout-dry?user=alice')->{body}, "paid\n", 'dry run: no token, and it passes');
like(error_log(), qr/\[warn\].*flash sale: TOKEN_MISSING in zone "shop", dry run/,
     'dry run: the refusal is logged as such');
stop_nginx();

# Another host: the checkout only, no permit in its zones, and the secret in `files`.
sub start_checkout_host {
    my ($files) = @_;
    start_nginx(workers => 1, files => $files, http => <<"HTTP");
    flash_sale_zone \$arg_user zone=shop:1m;
    flash_sale_zone \$arg_user zone=phone:1m;
    server {
        listen 127.0.0.1:$port;
$checkout
    }
HTTP
}

# Another host with the same secret.
start_checkout_host(\%files);
is(fetch('/checkout?user=alice', 'GET', bearer($token))->{status}, 200,
   'another host with the same secret passes alice');
is(fetch('/checkout?user=bob', 'GET', bearer($token))->{status}, 403, 'and refuses bob with it');
stop_nginx();

# And a host with another secret refuses them all.
start_checkout_host({ 'token.key' => $other_secret });
like(fetch('/checkout?user=alice', 'GET', bearer($token))->{body}, qr/^TOKEN_INVALID/,
     'a host with another secret refuses the token');
stop_nginx();

done_testing();
