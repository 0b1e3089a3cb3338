//! Fuzz target: arbitrary bytes as an OVA through the whole pipeline (the tar
//! thread, the descriptor, the re-probe of the disk and its reader) into a sink
//! that drops everything. Inputs that are not an OVA are made one: they become
//! the single disk of a small OVA, so every input reaches the OVA code.

#![no_main]

use diskimport::pipeline::{run, ConvertOptions};
use diskimport::sink::null::NullSink;
use libfuzzer_sys::fuzz_target;

const DESCRIPTOR: &[u8] = br#"<Envelope><References><File ovf:id="f" ovf:href="d"/></References><DiskSection><Disk ovf:fileRef="f"/></DiskSection></Envelope>"#;

fuzz_target!(|data: &[u8]| {
    let input = if data.len() > 262 && data[257..].starts_with(b"ustar") {
        data.to_vec()
    } else {
        let mut ova = tar::Builder::new(Vec::new());
        for (name, body) in [("vm.ovf", DESCRIPTOR), ("d", data)] {
            let mut header = tar::Header::new_ustar();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            ova.append_data(&mut header, name, body).unwrap();
        }
        ova.into_inner().unwrap()
    };
    let mut sink = NullSink::default();
    let options = ConvertOptions {
        ova_disk: (data.len() % 3 == 0).then(|| "d".to_string()),
        ..ConvertOptions::default()
    };
    let _ = run(
        Box::new(std::io::Cursor::new(input)),
        &mut sink,
        &options,
        Default::default(),
    );
});
