//! DNS queries as a guest sends them to its network's DNS server: the parser, and the
//! answer built from what it read. Finding: a panic, or an answer that does not echo the
//! query's id and question.
#![no_main]

use engine::network::dns::{answer, error_answer, parse_query, RCODE_OK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_query(data) {
        Ok(q) => {
            assert!(q.question_end <= data.len());
            assert!(q.name.len() <= 255);
            let a = answer(data, &q, RCODE_OK, &[std::net::Ipv4Addr::new(10, 0, 0, 2)]);
            assert_eq!(&a[..2], &data[..2]);
            assert_eq!(&a[12..q.question_end], &data[12..q.question_end]);
        }
        Err(e) => {
            let _ = error_answer(data, &e);
        }
    }
});
