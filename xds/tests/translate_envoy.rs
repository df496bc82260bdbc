//! The real Envoy 1.40 accepts what shoal generates (`envoy --mode validate`).

#[path = "translate_common.rs"]
mod common;

use common::*;

#[test]
fn envoy_accepts_colorapp() {
    let model = model_of(&colorapp_docs());
    let eps = colorapp_endpoints();
    for p in proxies(&model) {
        let s = snapshot(&model, &eps, &p);
        if let Err(e) = envoy_validate(&s, &p) {
            panic!("{p}:\n{}\n{e}", shoal_xds::translate::render(&s));
        }
    }
}
