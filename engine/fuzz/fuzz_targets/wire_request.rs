//! A request frame of arbitrary bytes: the header is checked, the body decodes or is refused
//! with a status, and whatever decodes re-encodes to the same frame; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mykey_engine::wire::{HEADER_LEN, Request, request_header};

fuzz_target!(|data: &[u8]| {
    let Some(h) = data.get(..HEADER_LEN) else {
        return;
    };
    let h: [u8; HEADER_LEN] = h.try_into().expect("8 bytes");
    let Ok((op, len)) = request_header(&h) else {
        return;
    };
    // The body is whatever follows the header, whatever length the header claims: the
    // decoder must refuse every body that is not exactly one request.
    let body = &data[HEADER_LEN..];
    if let Ok(req) = Request::decode(op, body) {
        assert_eq!(req.op(), op);
        let mut again = Vec::new();
        req.encode(&mut again).expect("a decoded request encodes");
        assert_eq!(&again[HEADER_LEN..], body);
        assert_eq!(again[..4], data[..4]);
        if body.len() == len as usize {
            assert_eq!(again, data);
        }
    }
});
