//! A component with every export name of `sluice:rule/rule` but the wrong
//! signatures. Loading it as a rule must fail with a type error.

wit_bindgen::generate!({
    inline: "
        package test:wrong;
        world wrong {
            export filter: func(kind: string) -> bool;
            export partition-key: func(kind: string) -> option<string>;
            export membership: func(kind: string) -> u8;
            export select: func(kinds: list<string>) -> list<bool>;
            export handle-batch: func(n: u32) -> u32;
        }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn filter(kind: String) -> bool {
        kind.is_empty()
    }

    fn partition_key(kind: String) -> Option<String> {
        Some(kind)
    }

    fn membership(_kind: String) -> u8 {
        0
    }

    fn select(kinds: Vec<String>) -> Vec<bool> {
        kinds.iter().map(|k| k.is_empty()).collect()
    }

    fn handle_batch(n: u32) -> u32 {
        n
    }
}

export!(Wrong);
