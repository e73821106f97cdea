# Drops with many items in one zone (`flash_sale_item`), under a crowd on two workers:
# - ten items with their stock from a `map`: 5,000 buyers spread over them, five rounds; each
#   item sells exactly its stock, one sold out from the start sells nothing and leaves the
#   others alone, and every winner passes again with the same permit, for that item only;
# - one per buyer (`flash_sale_max_per_buyer 1`): buyers racing for several items at once, on
#   both workers, get one each and LIMIT_REACHED for the rest; 2 per buyer likewise;
# - the token names the item, and a checkout that requires it refuses another item's;
# - an empty item is NO_ITEM; a stock that is not a number is refused (500) and logged.
#
# This file drives nginx itself, with the helpers in t/lib/FlashSale/Crowd.pm.

use strict;
use warnings;
use Test::More;
use FlashSale::Crowd qw(start_nginx stop_nginx crowd crowd_port fetch error_log);

my $port = crowd_port();

# Ten items: item-1 .. item-9 with 1 to 9 pairs, item-0 sold out from the start (stock 0).
my %stock = map { ("item-$_" => $_) } 0 .. 9;
my $map = join '', map { "        $_ $stock{$_};\n" } sort keys %stock;

sub drop_config {
    my (%opt) = @_;
    my $per_buyer = $opt{per_buyer} ? "flash_sale_max_per_buyer $opt{per_buyer};" : '';
    my $ratio = $opt{ratio} // 0;
    return <<"HTTP";
    map \$arg_sku \$stock {
$map        bad-stock lots;
        default 0;
    }
    flash_sale_zone \$arg_user zone=drop:10m;
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 100000;
        add_header X-Sale \$flash_sale_status always;
        add_header X-Worker \$pid always;
        add_header X-Seq \$flash_sale_seq always;
        flash_sale_token_secret token.key;
        location /drop {
            flash_sale zone=drop;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            flash_sale_block_ratio $ratio;
            flash_sale_draw per_key;
            $per_buyer
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /token {
            flash_sale zone=drop;
            flash_sale_item \$arg_sku;
            flash_sale_max_permits \$stock;
            $per_buyer
            # add_header here replaces the server's: X-Sale again.
            add_header X-Sale \$flash_sale_status always;
            add_header X-Token \$flash_sale_token always;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /checkout {
            flash_sale_verify zone=drop token=\$arg_token item=\$arg_sku;
            proxy_pass http://127.0.0.1:$port/backend;
        }
        location /backend { return 200 "ok\\n"; }
    }
HTTP
}

my %files = ('token.key' => ('k' x 40) . "\n");

sub tally_by_item {
    my (@results) = @_;
    my %by;
    for my $r (@results) {
        my ($sku) = $r->{path} =~ /sku=([^&]+)/;
        $by{$sku}{ $r->{sale} }++;
    }
    return \%by;
}

# Ten items, 5,000 buyers, each asking for one item; two workers; five rounds with fresh zones.
for my $round (1 .. 5) {
    start_nginx(workers => 2, http => drop_config(ratio => 0.2), files => \%files);
    my @paths = map { my $i = $_ % 10; "/drop?user=r$round-b$_&sku=item-$i" } 1 .. 5000;
    my @first = crowd(paths => \@paths, connections => 64);
    is(scalar @first, 5000, "round $round: every buyer got an answer");
    my $by = tally_by_item(@first);
    my @exact = grep { ($by->{"item-$_"}{ADMITTED} // 0) == $_ } 0 .. 9;
    is(scalar @exact, 10, "round $round: each of the ten items sold exactly its stock")
        or diag explain { map { $_ => $by->{$_}{ADMITTED} // 0 } sort keys %$by };
    is(($by->{'item-0'}{SOLD_OUT} // 0), 500, "round $round: the sold-out item turned all away");
    ok(($by->{'item-9'}{BLOCKED} // 0) > 0, "round $round: the draw ran per item");
    my %workers = map { $_->{worker} => 1 } @first;
    is(scalar keys %workers, 2, "round $round: both workers decided");
    my %winner = map { $_->{path} => $_->{seq} } grep { $_->{sale} eq 'ADMITTED' } @first;
    is(scalar keys %winner, 45, "round $round: 45 winners in all");

    my @again = crowd(paths => \@paths, connections => 64);
    my @passed = grep { $_->{status} == 200 } @again;
    is(scalar @passed, 45, "round $round: 45 pass on the second visit");
    is(scalar(grep { defined $winner{ $_->{path} } && $_->{sale} eq 'PERMITTED'
                     && $_->{seq} eq $winner{ $_->{path} } } @passed), 45,
       "round $round: the winners, PERMITTED with the number they won");
    # A winner asking for another item holds no permit for it: it is sold out by now.
    my @other = map { my $p = $_; $p =~ s/sku=item-(\d)/"sku=item-" . (($1 + 1) % 10)/e; $p }
                sort keys %winner;
    my @cross = crowd(paths => \@other, connections => 16);
    is(scalar(grep { $_->{status} == 200 } @cross), 0,
       "round $round: no winner passes for another item");
    stop_nginx();
}

# One per buyer: 300 buyers each ask for three items at once, on many connections (both
# workers), stock plenty: each gets exactly one, LIMIT_REACHED for the others.
for my $limit (1, 2) {
    start_nginx(workers => 2, http => drop_config(per_buyer => $limit), files => \%files);
    my @paths;
    for my $b (1 .. 300) {
        push @paths, map { "/drop?user=limit$limit-b$b&sku=item-$_" } 7, 8, 9;
    }
    # 7 + 8 + 9 = 24 pairs: fewer than the buyers, so some find every item sold out.
    my @results = crowd(paths => \@paths, connections => 64);
    my %held;
    for my $r (grep { $_->{sale} eq 'ADMITTED' } @results) {
        my ($user) = $r->{path} =~ /user=([^&]+)/;
        $held{$user}++;
    }
    my $by = tally_by_item(@results);
    is(scalar(grep { ($by->{"item-$_"}{ADMITTED} // 0) == $_ } 7, 8, 9), 3,
       "limit $limit: each item sold exactly its stock");
    is(scalar(grep { $_ > $limit } values %held), 0, "limit $limit: nobody holds more than $limit");
    my $limited = grep { $_->{sale} eq 'LIMIT_REACHED' } @results;
    ok($limited > 0, "limit $limit: buyers over the limit were told LIMIT_REACHED ($limited)");
    is(scalar(grep { $_->{sale} eq 'LIMIT_REACHED' && $_->{status} == 503 } @results), $limited,
       "limit $limit: LIMIT_REACHED is answered with the reject status");
    # The same buyers again: what they hold passes, the rest is still refused.
    my @again = crowd(paths => \@paths, connections => 64);
    is(scalar(grep { $_->{status} == 200 } @again), 24, "limit $limit: the 24 permits pass again");
    stop_nginx();
}

# The token names the item; the checkout requires the item of its own request.
start_nginx(workers => 1, http => drop_config(per_buyer => 2), files => \%files);
my $won = fetch('/token?user=amy&sku=item-5');
is($won->{sale}, 'ADMITTED', 'amy wins item-5') or diag explain $won;
my ($token) = $won->{headers} =~ /^X-Token: (\S+)/mi;
ok($token, 'with a token');
is(fetch("/checkout?user=amy&sku=item-5&token=$token")->{status}, 200,
   'the token buys item-5 at the checkout');
my $other = fetch("/checkout?user=amy&sku=item-6&token=$token");
is($other->{status}, 403, 'but not item-6');
like($other->{body}, qr/TOKEN_OTHER_ITEM/, 'told TOKEN_OTHER_ITEM');
is(fetch("/checkout?user=bob&sku=item-5&token=$token")->{status}, 403, "nor for bob");

# An empty item, an unknown one, a stock that is not a number.
my $none = fetch('/drop?user=amy');
is($none->{status}, 400, 'no item: 400');
is($none->{sale}, 'NO_ITEM', 'told NO_ITEM');
my $long = fetch('/drop?user=amy&sku=' . ('x' x 257));
is($long->{sale}, 'ITEM_TOO_LONG', 'an item of 257 bytes is ITEM_TOO_LONG');
is(fetch('/drop?user=amy&sku=unknown')->{sale}, 'SOLD_OUT', 'an item the map does not know: stock 0');
is(fetch('/drop?user=amy&sku=bad-stock')->{status}, 500, 'a stock that is not a number: 500');
like(error_log(), qr/"flash_sale_max_permits" is "lots" for item "bad-stock" in zone "drop", not a whole number of permits/,
     'and the error log says why');
stop_nginx();

done_testing();
