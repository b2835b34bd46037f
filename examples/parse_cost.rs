fn main() {
    let cfg = pgcat::proxy::router::parser::ParserConfig::default();
    let q = "SELECT abalance FROM pgbench_accounts WHERE aid = 412345;";
    let n = 200_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let r = pgcat::proxy::router::parser::infer(std::hint::black_box(q), &cfg);
        std::hint::black_box(r.ok());
    }
    println!("infer: {:?}/op", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let r = sqlparser::parser::Parser::parse_sql(
            &sqlparser::dialect::PostgreSqlDialect {},
            std::hint::black_box(q),
        );
        std::hint::black_box(r.ok());
    }
    println!("parse_sql: {:?}/op", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let mut tk = sqlparser::tokenizer::Tokenizer::new(
            &sqlparser::dialect::PostgreSqlDialect {},
            std::hint::black_box(q),
        );
        std::hint::black_box(tk.tokenize().ok());
    }
    println!("tokenize: {:?}/op", t.elapsed() / n);
}
