//! A component for another world: it has `filter` but none of the other
//! exports of `sluice:rule/rule`. Loading it as a rule must fail and name
//! what is missing.

wit_bindgen::generate!({
    inline: "
        package test:other;
        world other {
            export filter: func(kind: string) -> bool;
            export hello: func() -> string;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn filter(kind: String) -> bool {
        kind == "x"
    }

    fn hello() -> String {
        "hello".into()
    }
}

export!(Other);
