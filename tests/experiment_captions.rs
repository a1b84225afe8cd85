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
