fn main() {
    println!("airlock");
}
