//! The fuzzer as part of the test suite: a short run over every target (the long one is
//! `scripts/fuzz.sh`), and regression tests for what fuzzing the decoders turned up.

use std::path::Path;

use iotrace_collector::format::{TraceReader, COMPRESSED, MAGIC, MAX_FRAME};
use iotrace_fuzz::targets::{frame, Seeds, Target};
use iotrace_fuzz::{fuzz_target, largest_allocation, Outcome};

#[test]
fn twenty_thousand_inputs_find_no_panics() {
    let seeds = Seeds::committed();
    let mut total = Outcome::default();
    for target in Target::ALL {
        let outcome = fuzz_target(target, &seeds, 5_000, 20_000);
        for f in &outcome.failures {
            eprintln!("{}: {} on {:02x?}", target.name(), f.message, f.input);
        }
        total.add(outcome);
    }
    println!("{}", total.summary());
    assert!(total.inputs >= 20_000);
    assert_eq!(total.panics, 0, "{:?}", total.failures);
}

/// Largest single allocation made while reading `bytes` as a trace.
fn largest_allocation_reading(bytes: &[u8]) -> usize {
    largest_allocation(|| {
        if let Ok(reader) = TraceReader::new(bytes, Path::new("t")) {
            for record in reader {
                std::hint::black_box(record);
            }
        }
    })
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&[0; 6]);
    h
}

/// Regression: the reader zero-filled a buffer of the frame's claimed length (up to 16 MiB)
/// before reading it, so every file ending in a frame header that claims 16 MiB cost
/// 16 MiB. It now reads what the file holds, up to the claim.
#[test]
fn frame_length_claiming_16_mib_in_a_short_file_allocates_what_is_there() {
    let mut file = header();
    file.extend_from_slice(&MAX_FRAME.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    file.extend_from_slice(&[7u8; 100]);
    let mut reader = TraceReader::new(&file[..], Path::new("t")).unwrap();
    assert!(reader.next().is_none());
    assert!(format!("{:?}", reader.stop()).contains("Truncated"));
    let largest = largest_allocation_reading(&file);
    assert!(
        largest < 1 << 20,
        "allocated {largest} bytes for a 100-byte frame"
    );
}

/// Regression: every compressed frame was decompressed into a fresh 16 MiB buffer whatever
/// its size. Now the buffer is the zstd frame's declared content size; a frame whose data
/// is larger than it declares is corrupt, not a reason to allocate more.
#[test]
fn compressed_frame_declaring_a_small_size_cannot_grow_past_it() {
    use iotrace_collector::format::{kind, Lost, Record};
    let lost = Lost {
        cpu: 1,
        time_ns: 2,
        records: 3,
    };
    let payload = postcard::to_allocvec(&lost).unwrap();
    let packed = zstd::bulk::compress(&payload, 1).unwrap();
    let mut body = vec![kind::LOST | COMPRESSED];
    body.extend_from_slice(&packed);
    let mut file = header();
    file.extend_from_slice(&frame(&body));
    let records: Vec<Record> = TraceReader::new(&file[..], Path::new("t"))
        .unwrap()
        .collect();
    assert_eq!(records, vec![Record::Lost(lost)]);
    let largest = largest_allocation_reading(&file);
    assert!(
        largest < 1 << 20,
        "allocated {largest} bytes for a 3-byte record"
    );

    // 1 MiB of zeros declared (in the zstd frame header) as 8 bytes.
    let big = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
    let mut lying = big;
    // Frame header: magic(4), descriptor(1), window descriptor(1, unless single-segment),
    // then the content size; here the 4-byte form (FCS flag 2), no dictionary id.
    let descriptor = lying[4];
    assert!(
        descriptor >> 6 == 2 && descriptor & 3 == 0,
        "{descriptor:#x}"
    );
    let at = if descriptor & 0x20 != 0 { 5 } else { 6 };
    {
        lying[at..at + 4].copy_from_slice(&8u32.to_le_bytes());
        let mut body = vec![kind::LOST | COMPRESSED];
        body.extend_from_slice(&lying);
        let mut file = header();
        file.extend_from_slice(&frame(&body));
        let mut reader = TraceReader::new(&file[..], Path::new("t")).unwrap();
        assert!(reader.next().is_none());
        assert!(
            format!("{:?}", reader.stop()).contains("does not decompress"),
            "{:?}",
            reader.stop()
        );
    }
}
