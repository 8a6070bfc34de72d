from blocks import BLOCKS, register

register()
print("registered:", ", ".join(b.get_block_type_slug() for b in BLOCKS))
