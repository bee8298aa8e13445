//! The thread count the user chose holds on every backend: the native pool reads it from
//! `threads::init`, and the Candle backend's CPU ops from the variables Candle's pool reads.

#[test]
fn the_chosen_thread_count_reaches_candles_pool_too() {
    // The only test in this binary, so this `init` is the process's first.
    assert_eq!(engine::threads::init(3), 3);
    assert_eq!(engine::threads::current(), 3);
    assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("3"));
    assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok("3"));
}
