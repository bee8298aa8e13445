pub mod hub;
pub mod webdriver;
