use clap::Parser;

#[tokio::main]
async fn main() {
    let code = storefront::cli::run(storefront::cli::Cli::parse()).await;
    std::process::exit(code);
}
