# Written into objs/Makefile by nginx's configure (see config): cargo builds the module as a
# static library against this nginx tree. Make cannot see Rust's sources and dependencies, so
# cargo runs every time and decides itself what to rebuild.

cat << END                                                      >> $NGX_MAKEFILE

.FLASH_SALE_PHONY: ;

$ngx_flash_sale_lib: .FLASH_SALE_PHONY
	NGINX_SOURCE_DIR="$PWD" NGINX_BUILD_DIR="$PWD/$NGX_OBJS" \\
	$NGX_CARGO rustc --release --lib --crate-type staticlib --no-default-features \\
		--manifest-path "$ngx_addon_dir/Cargo.toml" --target-dir "$ngx_flash_sale_target"

END

if [ "$ngx_flash_sale_link" = DYNAMIC ]; then
    cat << END                                                  >> $NGX_MAKEFILE
$NGX_OBJS/ngx_http_flash_sale_module$ngx_modext: $ngx_flash_sale_lib

END
fi
