pub mod hub;
pub mod process;
pub mod webdriver;
