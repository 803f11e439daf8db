module igw/gobackend

go 1.19
