//! ngx_http_flash_sale_module: see README.md.
pub mod parse;
pub mod sale;
pub mod zone;
