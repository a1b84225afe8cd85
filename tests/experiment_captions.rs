//! COCO captions: the first 100 by annotation id (the paper's reading) and by image id must
//! equal the reference lists in `$DDREP_SHARED/coco/` (never copied into the repository).

use std::path::PathBuf;

use ddrep::experiment::captions::read_coco;
use ddrep::experiment::schema::Selection;

fn shared() -> Option<PathBuf> {
    match std::env::var_os("DDREP_SHARED") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            println!("skipped: DDREP_SHARED not set");
            None
        }
    }
}

fn check(select: Selection, reference: &str) {
    let Some(dir) = shared() else { return };
    let coco = dir.join("coco");
    let got = read_coco(&coco.join("captions_val2017.json"), select, 100).unwrap();
    let want: Vec<serde_json::Value> = std::fs::read_to_string(coco.join(reference)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 100);
    assert_eq!(want.len(), 100);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.id, w["id"].as_u64());
        assert_eq!(g.image_id, w["image_id"].as_u64());
        assert_eq!(g.text, w["caption"].as_str().unwrap());
    }
}

#[test]
fn first_100_by_annotation_id() {
    check(Selection::ByAnnotationId, "first100_by_annotation_id.jsonl");
}

#[test]
fn first_100_by_image_id() {
    check(Selection::ByImageId, "first100_by_image_id.jsonl");
}

#[test]
fn missing_file_says_how_to_get_it() {
    let spec = ddrep::experiment::schema::CocoSpec { path: Some("/nonexistent/captions_val2017.json".into()), select: Selection::ByAnnotationId, first: 3 };
    let e = format!("{:#}", ddrep::experiment::captions::coco_path(&spec).unwrap_err());
    assert!(e.contains("annotations_trainval2017.zip") && e.contains("DDREP_COCO_CAPTIONS"), "{e}");
}

/// A COCO file whose selected captions include an empty one, or whose annotation ids repeat,
/// is refused naming the file and the id (inline captions refuse empty ones the same way).
#[test]
fn empty_captions_and_repeated_ids_are_refused() {
    let dir = std::env::temp_dir().join(format!("ddrep_coco_bad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, anns: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{{\"annotations\": [{anns}]}}")).unwrap();
        p
    };
    let read = |p: &PathBuf, n: usize| read_coco(p, Selection::ByAnnotationId, n);
    let blank = write("blank.json", r#"{"id": 5, "image_id": 1, "caption": "a dog"}, {"id": 7, "image_id": 1, "caption": "  \n"}, {"id": 9, "image_id": 2, "caption": "a cat"}"#);
    // The blank caption (id 7) is second by annotation id: the first one is fine, two are not.
    assert_eq!(read(&blank, 1).unwrap()[0].text, "a dog");
    let e = format!("{:#}", read(&blank, 2).unwrap_err());
    assert!(e.contains("blank.json") && e.contains("annotation id 7 has an empty caption"), "{e}");
    let twice = write("twice.json", r#"{"id": 5, "image_id": 1, "caption": "a dog"}, {"id": 5, "image_id": 2, "caption": "a cat"}"#);
    let e = format!("{:#}", read(&twice, 1).unwrap_err());
    assert!(e.contains("twice.json") && e.contains("annotation id 5 appears more than once"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
