"""Running iotpipe without an AWS account: the embedded emulator and a sensor simulator."""
